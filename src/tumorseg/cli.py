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
    """Generate (data.source: synthetic), copy (local) or fetch (url) BraTS-Africa into data/raw, validate every case and write data/manifest.parquet."""
    from tumorseg.data.download import main

    df = main(params)
    typer.echo(f"{(df['status'] == 'ok').sum()} cases ok, {(df['status'] != 'ok').sum()} skipped -> {paths.MANIFEST}")


@app.command()
def preprocess(params: Path = ParamsOption) -> None:
    """Stack the 4 sequences, crop, normalise and cut every valid case into axial slices (data/preprocessed: per-case .npy arrays + Parquet slice index)."""
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
    """Train one model on the patient-level split (params: train, models.<model>, mlflow) and log it to MLflow; writes models/<model>/. A killed training resumes from checkpoints/<model>/."""
    from tumorseg.training.loop import main

    config = main(model, params)
    typer.echo(f"{model}: best validation mean Dice {config['best_val_dice_mean']:.4f} at epoch {config['best_epoch']} -> {paths.MODELS_DIR / model}")


@app.command()
def infer(model: str = ModelArgument, params: Path = ParamsOption) -> None:
    """Predict the validation and test patients with a trained model (params: infer, the train block's device keys) -> inference/<model>/ (region probabilities read by postprocess, evaluate and the ensemble)."""
    from tumorseg.evaluation.infer import main

    index = main(model, params)
    typer.echo(f"{model}: {len(index['cases'])} patients -> {paths.INFERENCE_DIR / model}")


@app.command()
def ensemble(params: Path = ParamsOption) -> None:
    """Average params.yaml's models' probabilities -> inference/ensemble/ (post-processed and evaluated like a model)."""
    from tumorseg.evaluation.ensemble import main

    index = main(params)
    typer.echo(f"ensemble of {', '.join(index['members'])}: {len(index['cases'])} patients -> {paths.INFERENCE_DIR / 'ensemble'}")


EnsembleArgument = typer.Argument(..., help="unet | resnet_unet | transunet | ensemble")


@app.command()
def postprocess(model: str = EnsembleArgument, params: Path = ParamsOption) -> None:
    """Fit the post-processing thresholds on the validation patients (params: postprocess) -> models/<model>/postprocess.json."""
    from tumorseg.evaluation.postprocess import main

    result = main(model, params)
    typer.echo(f"{model}: {result['rules']}")


@app.command()
def evaluate(model: str = EnsembleArgument, params: Path = ParamsOption) -> None:
    """Score every test patient in 3D, with and without the fitted post-processing (legacy and BraTS 2023 lesion-wise Dice and HD95 per region) -> metrics/<model>.json and evaluation/<model>/."""
    from tumorseg.evaluation.evaluate import main

    metrics = main(model, params)
    typer.echo(" ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict)))


@app.command()
def report(params: Path = ParamsOption) -> None:
    """Compare the trained models and the ensemble side by side -> reports/ (table, training curves, qualitative figure); the best by validation gets the MLflow alias 'champion'."""
    from tumorseg.evaluation.report import main

    main(params)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(None, help="Patient folder(s) in BraTS naming (<case>-t1n.nii.gz, ...), "
                                                  "or a folder of patient folders (batch mode)."),
    model: str = typer.Option("champion", "--model", "-m", help="champion (the pipeline model with the best validation "
                              "lesion-wise Dice, as the report chooses it), a pipeline model name (models/<name>), ensemble "
                              "(params.yaml's models' probabilities averaged, as the ensemble stage does), a model folder or model.safetensors, or "
                              "an MLflow URI such as models:/tumorseg-resnet_unet@champion."),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Folder for <case>-seg.nii.gz label maps."),
    t1n: Path = typer.Option(None, help="Explicit files instead of a folder: native T1."),
    t1c: Path = typer.Option(None, help="Contrast-enhanced T1."),
    t2w: Path = typer.Option(None, help="T2-weighted."),
    t2f: Path = typer.Option(None, help="T2-FLAIR."),
    batch_size: int = typer.Option(32, help="Slices per forward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    tta: str = typer.Option("none", "--tta", help="Mirrorings averaged per slice: none | lr (left-right, as training "
                            "flips) | all (the four in-plane ones). The infer stage's `infer.tta` (recorded in the model's "
                            "postprocess.json) gives the reported test metrics; each mirroring costs one more prediction."),
    postprocess: bool = typer.Option(True, "--postprocess/--no-postprocess", help="Apply the post-processing fitted for "
                                     "the model on the validation patients (<model folder>/postprocess.json), as evaluate does."),
    runtime: str = typer.Option("torch", help="torch | onnx (the model folder's model.onnx from `tumorseg export`, run by "
                                "ONNX Runtime)."),
    cpu_kernels: str = typer.Option(None, help="avx2 | native (this CPU's fastest kernels, machine-dependent numbers). "
                                    "Default: the pipeline's train.cpu_kernels default (avx2: the same numbers on any x86-64 "
                                    "CPU with AVX2)."),
    threads: int = typer.Option(None, help="CPU threads (0: all cores); part of the numbers. Default: the pipeline's "
                                "train.num_threads default (2)."),
) -> None:
    """Segment new patients: a BraTS label map (0 background, 1 necrotic core, 2 edema, 3 enhancing tumour) per patient, with the input's shape, affine and header. Bad input: a message naming the file, exit code 2, no output for that patient."""
    from tumorseg.logs import setup_logging
    from tumorseg.prediction import InputError, case_from_files, cases_in_folder, run_predict

    setup_logging()
    explicit = [t1n, t1c, t2w, t2f]
    try:
        from tumorseg.evaluation.inference import TTA_CHOICES

        if tta not in TTA_CHOICES:
            raise InputError(f"--tta {tta}: expected one of {', '.join(TTA_CHOICES)}")
        if any(explicit):
            if not all(explicit) or inputs:
                raise InputError("give all four of --t1n --t1c --t2w --t2f, and no folder with them")
            cases = [case_from_files(t1n, t1c, t2w, t2f)]
        elif inputs:
            cases = [case for folder in inputs for case in cases_in_folder(folder)]
        else:
            raise InputError("nothing to predict: give a patient folder, a folder of patients, or --t1n --t1c --t2w --t2f")
        if cpu_kernels not in (None, "avx2", "native"):
            raise InputError(f"--cpu-kernels {cpu_kernels}: expected avx2 or native")
        if threads is not None and threads < 0:
            raise InputError(f"--threads {threads}: expected 0 (all cores) or more")
        results = run_predict(cases, model, out, paths.MODELS_DIR, batch_size=batch_size, device=device, tta=tta,
                              postprocess=postprocess, runtime=runtime, cpu_kernels=cpu_kernels, num_threads=threads)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    failed = [r for r in results if r[2]]
    for case, path, error in results:
        typer.echo(f"{case.case_id}: {path}" if path else f"{case.case_id}: FAILED: {error}", err=bool(error))
    if failed:
        raise typer.Exit(2)


@app.command()
def export(
    model: str = typer.Argument(..., help="A pipeline model name (models/<name>) or a model folder."),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    out: Path = typer.Option(None, help="Where to write it; default <model folder>/model.onnx (what --runtime onnx reads)."),
    size: tuple[int, int] = typer.Option((240, 240), help="Slice size the check runs at (and the fixed size of transunet's graph)."),
) -> None:
    """Export a trained model to ONNX (dynamic batch; dynamic slice size for unet and resnet_unet), checked against PyTorch."""
    from tumorseg.logs import setup_logging
    from tumorseg.models import MODEL_NAMES
    from tumorseg.models.export import ExportError, export_onnx

    setup_logging()
    if format != "onnx":
        typer.echo(f"error: --format {format}: only onnx is supported", err=True)
        raise typer.Exit(2)
    folder = paths.MODELS_DIR / model if model in MODEL_NAMES else Path(model)
    if not (folder / "model.json").is_file():
        typer.echo(f"error: {folder}: no trained model here (run `dvc repro` first)", err=True)
        raise typer.Exit(2)
    try:
        result = export_onnx(folder, out, size)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{result['path']}: max |logit difference| vs PyTorch "
               + ", ".join(f"{k}: {v:.1e}" for k, v in result["max_abs_diff"].items())
               + (f"; fixed slice size {result['fixed_size']}" if result["fixed_size"] else "; dynamic batch and slice size"))


@app.command("app")
def app_command(
    port: int = typer.Option(8501, help="Port to serve on."),
    address: str = typer.Option("localhost", help="Address to bind (localhost: this machine only)."),
    models_dir: Path = typer.Option(paths.MODELS_DIR, help="Folder with the trained models (models/<name>)."),
) -> None:
    """Start the Streamlit app: pick the bundled sample patient or upload one, segment it with a trained model, browse the slices with the regions overlaid, download the mask."""
    import os
    import subprocess
    import sys

    from tumorseg.app.support import MAX_UPLOAD_MB

    script = Path(__file__).parent / "app" / "streamlit_app.py"
    env = dict(os.environ, TUMORSEG_MODELS_DIR=str(models_dir.resolve()))
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address", address,
           "--server.headless", "true", "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false"]
    if os.name == "posix":
        os.execve(sys.executable, cmd, env)  # become the server: signals (Ctrl-C, a supervisor's SIGTERM) reach it directly
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command("ci-report")
def ci_report(
    base: str = typer.Option("main", help="The git revision to compare with (the pull request's base branch)."),
    base_metrics: Path = typer.Option(None, help="Compare with the metrics/<model>.json files in this folder instead of BASE "
                                                 "(a baseline of the same data, e.g. baselines/brats-africa for the real-data run)."),
    out: Path = typer.Option(None, help="Also write the markdown here (for the PR comment and the job summary)."),
) -> None:
    """Markdown for CI: each model's test Dice and HD95 per region against BASE (dvc metrics diff), plus the report stage's table."""
    from tumorseg.ci_report import CiReportError, build_report

    try:
        text = build_report(base, base_metrics=base_metrics)
    except CiReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if out:
        from tumorseg.fileio import atomic_file

        with atomic_file(out) as tmp:
            tmp.write_text(text)
    typer.echo(text)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
