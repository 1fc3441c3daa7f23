"""Model files: ``model.safetensors`` (the weights) + ``model.json`` (how to rebuild and feed them).

What ``train@<model>`` writes and evaluation, prediction, the app and MLflow-registered versions
read, so it lives with the models rather than with training (whose resumable state is
``tumorseg.training.checkpoint``). safetensors, unlike torch.save, writes byte-identical files
for equal weights (so DVC skips what follows) and loads without unpickling code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tumorseg.fileio import atomic_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


def save_model(folder: Path, state_dict: dict[str, torch.Tensor], config: dict) -> None:
    """Write the final weights and their config atomically (weights first, config last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_file(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"model": config["model"]})
    with atomic_file(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_model_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model here; run `dvc repro train@<model>` first")
    return json.loads(path.read_text())


def context_slices(config: dict) -> int:
    """The neighbours on each side a model sees (2.5D input, tumorseg.data.context); 0 for older models."""
    return int(config.get("context_slices", 0))


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``models/<name>`` (eval mode) and return it with its config."""
    from tumorseg.data.context import input_channels
    from tumorseg.models import build_model

    folder = Path(folder)
    config = read_model_config(folder)
    arch = dict(config["arch"])
    arch.pop("pretrained", None)  # the trained weights replace any pretrained encoder
    arch.pop("weights_file", None)
    model = build_model(config["model"], in_channels=input_channels(context_slices(config)), **arch)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"))
    return model.to(device).eval(), config
