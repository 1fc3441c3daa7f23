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


ModelArgument = typer.Argument(..., help="unet | resnet_unet | transunet")


@app.command()
def train(model: str = ModelArgument, params: Path = ParamsOption) -> None:
    """Train one model on the patient-level split (params: train, models.<model>, mlflow) and log it
    to MLflow; writes models/<model>/. A killed training resumes from checkpoints/<model>/."""
    from tumorseg.training.loop import main

    config = main(model, params)
    typer.echo(f"{model}: best validation mean Dice {config['best_val_dice_mean']:.4f} at epoch {config['best_epoch']} -> {paths.MODELS_DIR / model}")


@app.command()
def evaluate(model: str = ModelArgument, params: Path = ParamsOption) -> None:
    """Score a trained model on every test patient in 3D (Dice, HD95, sensitivity, specificity per region)
    -> metrics/<model>.json and evaluation/<model>/."""
    from tumorseg.evaluation.evaluate import main

    metrics = main(model, params)
    typer.echo(" ".join(f"{k}={v}" for k, v in metrics.items()))


@app.command()
def report(params: Path = ParamsOption) -> None:
    """Compare the trained models side by side -> reports/ (table, training curves, qualitative figure);
    the best gets the MLflow alias 'champion'."""
    from tumorseg.evaluation.report import main

    main(params)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
