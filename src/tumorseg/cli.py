"""The ``tumorseg`` command: every DVC stage, runnable by hand, plus the tools around them.

Each stage command reads its settings from params.yaml (``--params`` to use another file) and
writes the same outputs as ``dvc repro <stage>``; prefer ``dvc repro`` so DVC records them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tumorseg import paths

app = typer.Typer(
    help="Brain-tumour segmentation on BraTS-Africa MRI: the DVC pipeline's stages and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(paths.PARAMS, "--params", "-p", help="params.yaml to read settings from.")


@app.command()
def download(params: Path = ParamsOption) -> None:
    """Generate (data.source: synthetic), copy (local) or fetch (url) BraTS-Africa into data/raw,
    validate every case and write data/manifest.parquet."""
    from tumorseg.data.download import main

    df = main(params)
    typer.echo(f"{(df['status'] == 'ok').sum()} cases ok, {(df['status'] != 'ok').sum()} skipped -> {paths.MANIFEST}")


@app.command()
def preprocess(params: Path = ParamsOption) -> None:
    """Stack the 4 sequences, crop, normalise and cut every valid case into axial slices
    (data/preprocessed: per-case .npy arrays + Parquet slice index)."""
    from tumorseg.data.preprocess import main

    df = main(params)
    typer.echo(f"{df['case_id'].nunique()} cases, {len(df)} slices ({int(df['has_tumour'].sum())} with tumour) -> {paths.PREPROCESSED_DIR}")


@app.command()
def split(params: Path = ParamsOption) -> None:
    """Split patients into train / val / test (seeded, stratified by cohort) -> data/split.parquet."""
    from tumorseg.data.split import main

    df = main(params)
    counts = df.drop_duplicates("case_id").groupby("split").size().to_dict() if df.groupby("case_id")["split"].nunique().max() == 1 else df["split"].value_counts().to_dict()
    typer.echo(f"split: {counts} -> {paths.SPLIT}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
