"""`tumorseg predict`: a trained model applied to new patients' NIfTI volumes.

The input goes through exactly the training preprocessing (the settings saved in the model's
model.json), every axial slice with brain is predicted in batches (for ``ensemble``, by each of the
three models, their probabilities averaged), the three region outputs become BraTS labels (ET where
ET; else 1 where TC; else 2 where WT), the post-processing fitted on the validation patients is
applied, and the label map is written with the input's shape, affine and header. Bad input raises ``InputError`` naming the file; nothing is written
for that patient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumorseg.data.labels import SEQUENCES
# the pipeline reads its dataset in MODEL_ORIENTATION (tumorseg.data.orientation); an input in another one (RAS from
# dcm2niix, a sagittal volume) is turned into it for the 2D axial models and its labels turned back
from tumorseg.data.orientation import GRID_TOLERANCE, MODEL_ORIENTATION, axis_codes, orientation_transforms, to_model_orientation
from tumorseg.evaluation.postprocess import PostprocessRules

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_SUFFIX = "-seg.nii.gz"
RUNTIMES = ("torch", "onnx")  # onnx: the folder's model.onnx (tumorseg export) through ONNX Runtime
# BraTS volumes (and the embedded default) have 1 mm isotropic voxels; the 2D models see slices at that scale
TRAINED_SPACING_MM = 1.0
SPACING_TOLERANCE = 0.25  # in-plane voxel sizes further than this share from it get a warning


class InputError(ValueError):
    """The input volumes cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class CaseInput:
    case_id: str
    files: dict[str, Path]  # sequence (t1n, t1c, t2w, t2f) -> NIfTI file


def find_volume(folder: Path, kind: str) -> Path | None:
    """The <case>-<kind>.nii(.gz) file in ``folder`` (kind: a sequence, or seg for the mask), or None."""
    folder = Path(folder)
    matches = sorted(p for p in folder.iterdir() if p.is_file() and any(p.name.endswith(f"-{kind}{s}") for s in NIFTI_SUFFIXES))
    if len(matches) > 1:
        raise InputError(f"{folder}: several files for {kind}: {', '.join(m.name for m in matches)}; keep one")
    return matches[0] if matches else None


def case_from_folder(folder: Path) -> CaseInput:
    """One patient folder in BraTS naming: <case>-t1n.nii.gz, -t1c, -t2w, -t2f (a -seg file is ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = {seq: find_volume(folder, seq) for seq in SEQUENCES}
    missing = [seq for seq, path in files.items() if path is None]
    if missing:
        raise InputError(f"{folder}: missing sequence(s) {', '.join(missing)}; expected files named "
                         f"<case>-{{{','.join(SEQUENCES)}}}.nii.gz (or pass --t1n --t1c --t2w --t2f)")
    return CaseInput(folder.name, files)  # type: ignore[arg-type]


def cases_in_folder(folder: Path) -> list[CaseInput]:
    """A folder that is one patient, or a folder of patient folders (batch mode)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if any(find_volume(folder, seq) for seq in SEQUENCES):
        return [case_from_folder(folder)]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    cases = [case_from_folder(p) for p in subfolders if any(find_volume(p, seq) for seq in SEQUENCES)]
    if not cases:
        raise InputError(f"{folder}: no BraTS NIfTI files (<case>-t1n.nii.gz, ...) in it or in its sub-folders")
    return cases


def case_from_files(t1n: Path, t1c: Path, t2w: Path, t2f: Path, case_id: str | None = None) -> CaseInput:
    files = {"t1n": Path(t1n), "t1c": Path(t1c), "t2w": Path(t2w), "t2f": Path(t2f)}
    if case_id is None:
        stem = files["t1n"].name
        for suffix in NIFTI_SUFFIXES:
            stem = stem.removesuffix(suffix)
        case_id = stem.removesuffix("-t1n")
    return CaseInput(case_id, files)


def _check_same_grid(img, path: Path, reference, reference_path: Path) -> None:
    """A sequence on another grid than the first (orientation, voxel size or position) would be stacked voxel by
    voxel with the wrong anatomy: refused, naming both files."""
    import nibabel as nib

    codes, ref_codes = nib.aff2axcodes(img.affine), nib.aff2axcodes(reference.affine)
    if codes != ref_codes:
        raise InputError(f"{path}: orientation {''.join(codes)} differs from {reference_path} ({''.join(ref_codes)}); "
                         f"resample the sequences onto one grid (e.g. the BraTS SRI-24 template) first")
    if not np.allclose(img.affine, reference.affine, rtol=0, atol=GRID_TOLERANCE):
        diff = float(np.abs(img.affine - reference.affine).max())
        raise InputError(f"{path}: affine differs from {reference_path} by up to {diff:.4g} (tolerance {GRID_TOLERANCE}): "
                         f"the sequences are not on one voxel grid; co-register them first")


def load_case(case: CaseInput):
    """The four volumes as float32 (X, Y, Z) arrays in SEQUENCES order, and the first one's image
    (its affine and header are copied to the output)."""
    from tumorseg.data.brats import read_nifti

    channels, reference, shape = [], None, None
    for seq in SEQUENCES:
        path = case.files[seq]
        if not path.is_file():
            raise InputError(f"{path}: no such file ({seq})")
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file ({seq})")
        try:
            img = read_nifti(path)
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise InputError(f"{path}: not a readable NIfTI volume ({type(exc).__name__}: {exc})") from None
        if data.ndim != 3:
            raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
        if shape is not None and data.shape != shape:
            raise InputError(f"{path}: shape {data.shape} disagrees with {case.files[SEQUENCES[0]]} {shape}")
        data = data.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            raise InputError(f"{path}: {int((~np.isfinite(data)).sum())} non-finite voxels")
        shape = data.shape
        if reference is None:
            reference = img
        else:
            _check_same_grid(img, path, reference, case.files[SEQUENCES[0]])
        channels.append(data)
    return channels, reference


@dataclass
class Predictor:
    """What ``tumorseg predict`` and the app run: one trained model or the ensemble of the three, and the
    post-processing fitted for it on the validation patients (identity rules when none is applied)."""

    name: str
    members: list[tuple[object, dict]]  # (model in eval mode, its model.json), one per ensemble member
    rules: PostprocessRules = field(default_factory=PostprocessRules)
    rules_source: str | None = None  # the postprocess.json applied, or None
    # the mirrorings (none | lr | all) whose averaged probabilities the applied rules were fitted on, or None
    rules_tta: str | None = None

    def predict(self, channels: list[np.ndarray], spacing=(1.0, 1.0, 1.0), batch_size: int = 32, device="cpu",
                amp_dtype=None, tta: str = "none", affine: np.ndarray | None = None) -> np.ndarray:
        """(X, Y, Z) BraTS labels for one patient, preprocessed as each model's training data was, the
        members' probabilities averaged as the ensemble stage does, then post-processed. With the input's
        ``affine``, an input in another orientation than MODEL_ORIENTATION is predicted in that one and mapped back."""
        transforms = orientation_transforms(affine) if affine is not None else None
        if transforms is not None:
            from nibabel.orientations import apply_orientation

            log.info("%s: input orientation %s, predicted in %s (the orientation the models were trained in) and mapped "
                     "back", self.name, axis_codes(affine), "".join(MODEL_ORIENTATION))
            model_channels, model_spacing = to_model_orientation(channels, spacing, affine)
            labels = self.predict(model_channels, model_spacing, batch_size, device, amp_dtype, tta)
            return np.ascontiguousarray(apply_orientation(labels, transforms[1]))
        if any(abs(float(z) / TRAINED_SPACING_MM - 1) > SPACING_TOLERANCE for z in spacing[:2]):
            log.warning("%s: in-plane voxels of %s mm; the models were trained on BraTS's %g mm isotropic voxels and see a "
                        "tumour at that scale: resample the sequences to %g mm first (as the BraTS preprocessing does)",
                        self.name, " x ".join(f"{float(z):g}" for z in spacing), TRAINED_SPACING_MM, TRAINED_SPACING_MM)
        from tumorseg.config import from_mapping
        from tumorseg.data.preprocess import PreprocessSettings, preprocess_case
        from tumorseg.evaluation.inference import predict_probabilities
        from tumorseg.evaluation.predictions import dequantize, probability_volume, quantize, quantized_to_labels, to_volume
        from tumorseg.models.io import context_slices

        quantized, z0 = [], None
        for model, config in self.members:
            settings = from_mapping(PreprocessSettings, dict(config.get("preprocess") or {}), "model.json preprocess")
            images, _, _, (start, _) = preprocess_case(channels, None, settings)
            if z0 is not None and start != z0:
                raise InputError(f"{self.name}: its members were trained on differently cropped data; retrain them with one "
                                 f"preprocess block")
            z0 = start
            probs = predict_probabilities(model, images, batch_size, device, amp_dtype, tta=tta,
                                          context=context_slices(config))  # (Z', 3, Y, X)
            quantized.append(quantize(probs))
        q = quantized[0] if len(quantized) == 1 else quantize(sum(dequantize(x) for x in quantized) / len(quantized))
        labels = to_volume(quantized_to_labels(q), z0, channels[0].shape)
        return self.rules.apply(labels, spacing, probability_volume(np.moveaxis(q, 1, 0), z0, channels[0].shape))


def write_label_map(labels: np.ndarray, reference, path: Path) -> None:
    """uint8 labels with the reference image's affine and header, written atomically."""
    import nibabel as nib

    from tumorseg.fileio import atomic_file

    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    img = nib.Nifti1Image(labels.astype(np.uint8), reference.affine, header)
    # qform and sform as the input had them (they may differ, and either may be unset), not both set to one affine
    qform, qform_code = reference.get_qform(coded=True)
    sform, sform_code = reference.get_sform(coded=True)
    img.set_qform(qform, int(qform_code))
    img.set_sform(sform, int(sform_code))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:  # the temporary name keeps the .nii.gz suffix, so nibabel compresses
        nib.save(img, tmp)


def label_map_bytes(labels: np.ndarray, reference) -> bytes:
    """The same label map as ``write_label_map``, as .nii.gz bytes (for a download button)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prediction-seg.nii.gz"
        write_label_map(labels, reference, path)
        return path.read_bytes()


def load_predictor(ref: str, models_dir: Path, device="cpu", postprocess: bool = True, runtime: str = "torch") -> Predictor:
    """``champion`` (the pipeline model chosen on validation, as the report chooses it), a pipeline name
    (models/<name>), ``ensemble`` (params.yaml's models, as the ensemble stage averages them), a model folder or model.safetensors path, or an
    MLflow URI (models:/tumorseg-resnet_unet@champion, runs:/<id>/model).
    With ``postprocess``, the rules fitted for it on validation (its folder's postprocess.json) are applied;
    a model without them is used as the network gives it, and the log says so."""
    from tumorseg import paths
    from tumorseg.evaluation.champion import CHAMPION, champion, pipeline_models
    from tumorseg.evaluation.ensemble import ENSEMBLE
    from tumorseg.evaluation.postprocess import POSTPROCESS_FILE, read_fitted_tta
    from tumorseg.models import MODEL_NAMES

    if ref == CHAMPION:
        try:
            ref = champion(models_dir, pipeline_models(paths.PARAMS))
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"--model champion: {exc}") from None
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    if ref.startswith(("models:/", "runs:/")):
        if runtime != "torch":
            raise InputError(f"{ref}: --runtime {runtime} reads an exported model folder (tumorseg export); an MLflow model "
                             f"runs with --runtime torch")
        predictor = Predictor(ref, [_load_mlflow(ref, device)])
        if postprocess:
            log.warning("%s: an MLflow model carries no fitted post-processing; predicting without it (pass the pipeline "
                        "model name, e.g. --model unet, to apply models/unet/postprocess.json)", ref)
        return predictor
    if ref == ENSEMBLE:  # the models the ensemble stage averaged: params.yaml's (the three when there is none)
        members = [_load_folder(Path(models_dir) / m, m, runtime) for m in pipeline_models(paths.PARAMS)]
        folder = Path(models_dir) / ENSEMBLE
    else:
        folder = Path(models_dir) / ref if ref in MODEL_NAMES else Path(ref)
        if folder.is_file():
            folder = folder.parent
        members = [_load_folder(folder, ref, runtime)]
    predictor = Predictor(ref, [(m.to(device), c) for m, c in members])
    rules_path = folder / POSTPROCESS_FILE
    if postprocess and rules_path.is_file():
        from tumorseg.evaluation.postprocess import read_rules

        predictor.rules, predictor.rules_source = read_rules(rules_path), str(rules_path)
        predictor.rules_tta = read_fitted_tta(rules_path)
        log.info("%s: post-processing from %s: %s", ref, rules_path, predictor.rules)
    elif postprocess:
        log.warning("%s: no %s (run `dvc repro postprocess@%s`); predicting without post-processing", ref, rules_path, ref)
    return predictor


def _load_folder(path: Path, ref: str, runtime: str = "torch"):
    from tumorseg.models import MODEL_NAMES
    from tumorseg.models.io import CONFIG_FILE, load_model

    if not (path / CONFIG_FILE).is_file():
        hint = " (run `dvc repro` to train it)" if ref in MODEL_NAMES or ref == "ensemble" else ""
        raise InputError(f"{path}: no trained model here (model.json and model.safetensors expected){hint}")
    if runtime == "onnx":
        from tumorseg.models.export import ONNX_FILE, ExportError, load_onnx

        if not (path / ONNX_FILE).is_file():
            raise InputError(f"{path / ONNX_FILE}: not exported yet; run `tumorseg export {ref if ref in MODEL_NAMES else path} "
                             f"--format onnx` first")
        try:
            return load_onnx(path)
        except ExportError as exc:
            raise InputError(str(exc)) from None
    return load_model(path)


def _load_mlflow(uri: str, device):
    """The registered version's training run holds model.json and model.safetensors beside the
    MLflow model: the model is rebuilt from them exactly as from a pipeline folder (the MLflow
    model itself is a torch.export program, which cannot be switched to eval mode)."""
    import tempfile

    import mlflow

    from tumorseg.models.io import CONFIG_FILE, WEIGHTS_FILE, load_model
    from tumorseg.tracking import MlflowSettings, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(MlflowSettings()))
    try:
        run_id = mlflow.models.get_model_info(uri).run_id
        logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
        if not {CONFIG_FILE, WEIGHTS_FILE} <= logged:
            raise InputError(f"{uri}: its training run {run_id} has no {CONFIG_FILE} + {WEIGHTS_FILE} artifacts (it was "
                             f"logged by an older tumorseg); retrain it (`dvc repro -f train@<model>`) or pass the model "
                             f"folder instead (--model models/<model>)")
        with tempfile.TemporaryDirectory() as tmp:
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=tmp)
            return load_model(Path(tmp), device)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{uri}: cannot load the model from MLflow at {mlflow.get_tracking_uri()} "
                         f"({type(exc).__name__}: {exc})") from None


def output_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / f"{case_id}{LABEL_SUFFIX}"


def check_unique_case_ids(cases: list[CaseInput]) -> None:
    """Two inputs with one case id would write one output file, the second silently replacing the first."""
    seen: dict[str, CaseInput] = {}
    for case in cases:
        key = case.case_id or "prediction"
        if key in seen:
            first, second = (next(iter(c.files.values())).parent for c in (seen[key], case))
            raise InputError(f"{first} and {second}: both are case {key}, and both would be written to "
                             f"{key}{LABEL_SUFFIX}; predict them into different --out folders")
        seen[key] = case


def note_tta(tta: str, predictor: Predictor) -> None:
    """Say when the mirrorings differ from those the applied post-processing was fitted on: its confidence rule holds
    for those probabilities, and they are what the reported metrics measured (the default, none, is faster)."""
    fitted = predictor.rules_tta if predictor.rules_source else None
    if fitted and tta != fitted:
        log.info("%s: --tta %s; its post-processing (%s) was fitted on probabilities averaged over --tta %s, which "
                 "gives what the reported metrics measured (each mirroring costs one more prediction)", predictor.name,
                 tta, predictor.rules_source, fitted)


def run_predict(cases: list[CaseInput], model_ref: str, out_dir: Path, models_dir: Path, batch_size: int = 32,
                device: str = "auto", progress: bool = True, tta: str = "none",
                postprocess: bool = True, runtime: str = "torch", cpu_kernels: str | None = None,
                num_threads: int | None = None) -> list[tuple[CaseInput, Path | None, str | None]]:
    """Predict every case; a bad case is reported and skipped (nothing written for it), the others go on.
    Returns (case, written path or None, error or None) per case. ``cpu_kernels`` and ``num_threads`` as the
    pipeline's ``train`` block (None: RuntimeSettings' defaults, params.yaml's), so a CPU gives the probabilities
    the infer stage gives. ONNX Runtime has kernels of its own, which are not pinned (its threads are)."""
    from tqdm.auto import tqdm

    import torch

    from tumorseg.models.runtime import RuntimeSettings, pick_amp_dtype, pick_device, pin_cpu_kernels

    check_unique_case_ids(cases)
    defaults = RuntimeSettings()
    cpu_kernels = defaults.cpu_kernels if cpu_kernels is None else cpu_kernels
    num_threads = defaults.num_threads if num_threads is None else num_threads
    dev = pick_device(device)
    log.info("%s", pin_cpu_kernels(cpu_kernels, num_threads if dev.type == "cpu" else 0))
    if runtime == "onnx":
        log.info("--runtime onnx: ONNX Runtime picks its own CPU kernels (--cpu-kernels does not pin them), on torch's "
                 "%d threads", torch.get_num_threads())
    predictor = load_predictor(model_ref, models_dir, dev, postprocess, runtime)
    note_tta(tta, predictor)
    amp = pick_amp_dtype("auto", dev)
    results = []
    for case in tqdm(cases, desc="predict", unit="patient", disable=not progress or len(cases) < 2):
        try:
            channels, reference = load_case(case)
            spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
            labels = predictor.predict(channels, spacing, batch_size, dev, amp, tta, affine=reference.affine)
        except InputError as exc:
            log.error("%s", exc)
            results.append((case, None, str(exc)))
            continue
        path = output_path(out_dir, case.case_id or "prediction")
        write_label_map(labels, reference, path)
        results.append((case, path, None))
    return results
