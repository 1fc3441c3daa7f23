"""Portable model files: ``tumorseg export MODEL --format onnx`` -> ``<model folder>/model.onnx``.

The ONNX graph maps (N, C, H, W) float32 to (N, 3, H, W) logits like the PyTorch model; ``model.json`` (how to
preprocess and feed it) travels inside as metadata, so ``tumorseg predict --runtime onnx`` needs only the
.onnx file and ONNX Runtime. Batch size is dynamic for every model, and so are H and W for unet and
resnet_unet; transunet's learned position embeddings are resampled per token grid in Python, so its graph
is exported for one slice size (``size``, default BraTS's 240 x 240) and refuses others with a clear error.
Every export is checked against PyTorch on a random input before it is kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from tumorseg.data.context import input_channels
from tumorseg.fileio import atomic_file, sha256_file
from tumorseg.models.io import CONFIG_FILE, WEIGHTS_FILE, context_slices, load_model

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
CONFIG_KEY = "tumorseg.model_json"
WEIGHTS_KEY = "tumorseg.weights_sha256"  # the model.safetensors exported: a retrained folder's old .onnx is refused
FIXED_SIZE_MODELS = ("transunet",)  # spatial size fixed at export (position embeddings resampled per grid)
TOLERANCE = 1e-3  # max |logit difference| ONNX Runtime vs PyTorch accepted at export (measured ~1e-5 to 4e-5)


class ExportError(RuntimeError):
    """The export failed or does not reproduce PyTorch."""


def export_onnx(model_dir: Path, out_path: Path | None = None, size: tuple[int, int] = (240, 240), opset: int = 18) -> dict:
    """Export ``model_dir``'s model to ONNX, check it against PyTorch, and return what was checked."""
    import onnx

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):  # the exporter's step-by-step INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    model_dir = Path(model_dir)
    out_path = Path(out_path) if out_path else model_dir / ONNX_FILE
    model, config = load_model(model_dir)
    model = model.float().eval()
    channels = input_channels(context_slices(config))
    fixed = config["model"] in FIXED_SIZE_MODELS
    example = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch} if fixed else {0: batch, 2: torch.export.Dim("height", min=32, max=2048),
                                     3: torch.export.Dim("width", min=32, max=2048)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_path) as tmp:
        try:
            program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["logits"],
                                        dynamic_shapes={"x": dims}, dynamo=True, optimize=True, verbose=False)
        except Exception as exc:
            raise ExportError(f"{model_dir}: ONNX export failed ({type(exc).__name__}: {exc})") from None
        proto = program.model_proto
        meta = {CONFIG_KEY: json.dumps(config, sort_keys=True), "tumorseg.input_size": json.dumps(None if not fixed else list(size)),
                WEIGHTS_KEY: sha256_file(model_dir / WEIGHTS_FILE)}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        check = compare_with_torch(model, tmp, example)
        if fixed is False:
            other = torch.randn(1, channels, size[0] + 32, size[1] + 16, generator=torch.Generator().manual_seed(1))
            check.update({f"{k} (other size)": v for k, v in compare_with_torch(model, tmp, other).items()})
        worst = max(check.values())
        if worst > TOLERANCE:
            raise ExportError(f"{model_dir}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {TOLERANCE}); not written")
    log.info("%s -> %s (max |logit difference| vs PyTorch %s)", model_dir, out_path, {k: f"{v:.1e}" for k, v in check.items()})
    return {"path": str(out_path), "fixed_size": list(size) if fixed else None, "max_abs_diff": check}


def compare_with_torch(model: torch.nn.Module, onnx_path: Path, x: torch.Tensor) -> dict[str, float]:
    session = OnnxModel(onnx_path)
    with torch.no_grad():
        expected = model(x).numpy()
    got = session(x).numpy()
    return {f"{tuple(x.shape[-2:])}": float(np.abs(got - expected).max())}


class OnnxModel:
    """An exported model behind the small part of the nn.Module interface inference uses (call, eval, to)."""

    def __init__(self, path: Path, providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no ONNX model here; run `tumorseg export <model> --format onnx` first")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()  # the pinned count (tumorseg.models.runtime), not every core
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config = json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else {}
        self.weights_sha256 = meta.get(WEIGHTS_KEY)
        size = json.loads(meta.get("tumorseg.input_size", "null"))
        self.fixed_size = tuple(size) if size else None
        self.training = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size and tuple(x.shape[-2:]) != self.fixed_size:
            raise ValueError(f"{self.path}: exported for {self.fixed_size[0]} x {self.fixed_size[1]} slices, got "
                             f"{x.shape[-2]} x {x.shape[-1]}; export again with --size {x.shape[-2]} {x.shape[-1]}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"image": array})[0])

    def eval(self) -> "OnnxModel":
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        return self  # ONNX Runtime places the graph itself (its providers)


def load_onnx(folder: Path) -> tuple[OnnxModel, dict]:
    """The exported model of a model folder and its model.json (from the .onnx metadata, else the folder's).
    Beside a model.safetensors the export must be of those weights: model.onnx is not a pipeline output, so a
    retraining leaves the old graph behind, and the folder's postprocess.json would be applied to another network."""
    model = OnnxModel(Path(folder) / ONNX_FILE)
    weights = Path(folder) / WEIGHTS_FILE
    if weights.is_file() and model.weights_sha256 != sha256_file(weights):
        why = "its weights have changed since (retrained?)" if model.weights_sha256 else "it does not record which weights it holds"
        raise ExportError(f"{model.path}: not an export of {weights}: {why}; run `tumorseg export {Path(folder)} --format onnx` "
                          f"again")
    config = model.config or json.loads((Path(folder) / CONFIG_FILE).read_text())
    return model, config
