"""Checkpoints: the resumable training state, and the final model files.

* ``checkpoints/<model>/last.pt`` (git- and DVC-ignored, kept between runs): everything needed
  to continue a killed training exactly where it stopped; written atomically after every
  epoch and deleted when training completes. It carries a fingerprint of the params and data,
  and is ignored (with a message) when they changed.
* ``models/<model>/model.safetensors`` + ``model.json``: the best weights and how to rebuild
  and feed the model. safetensors, unlike torch.save, writes byte-identical files for equal
  weights (so DVC skips what follows) and loads without unpickling code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tumorseg.fileio import atomic_file

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
RESUME_FILE = "last.pt"


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def save_resume_state(folder: Path, state: dict) -> None:
    with atomic_file(Path(folder) / RESUME_FILE) as tmp:
        torch.save(state, tmp)


def load_resume_state(folder: Path, expected_fingerprint: str) -> dict | None:
    path = Path(folder) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a checkpoint we cannot read is not trusted, but the user is told
        log.warning("%s: unreadable checkpoint (%s); training from scratch", path, exc)
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.warning("%s: saved for other params or data; training from scratch", path)
        return None
    return state


def clear_resume_state(folder: Path) -> None:
    (Path(folder) / RESUME_FILE).unlink(missing_ok=True)


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


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``models/<name>`` (eval mode) and return it with its config."""
    from tumorseg.models import build_model

    folder = Path(folder)
    config = read_model_config(folder)
    arch = dict(config["arch"])
    arch.pop("pretrained", None)  # the trained weights replace any pretrained encoder
    arch.pop("weights_file", None)
    model = build_model(config["model"], **arch)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"))
    return model.to(device).eval(), config
