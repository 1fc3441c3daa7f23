"""Resume checkpoints: the state a killed training continues from.

``checkpoints/<model>/last.pt`` (git- and DVC-ignored, kept between runs) holds everything needed
to continue a killed training exactly where it stopped; written atomically after every epoch and
deleted when training completes. It carries a fingerprint of what the training depends on: its params
(preprocessing included), the split, the slice store's content and the source of the tumorseg code it
runs (hashed when training starts: a killed run never updates dvc.lock, so the lock cannot say); it is
ignored, with a message, when any of them changed. The final model files are ``tumorseg.models.io``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from tumorseg.fileio import atomic_file

log = logging.getLogger(__name__)

RESUME_FILE = "last.pt"


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_digest(folder: Path) -> str:
    """The content of every file under ``folder`` (names relative to it), e.g. the slice store."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return fingerprint([(p.relative_to(folder).as_posix(), file_digest(p)) for p in files])


def code_digest(package: str = "tumorseg") -> str:
    """The source of every module of ``package`` loaded now: the code this training runs (call it once the model's
    module is imported). An edit to any of them, e.g. the architecture or the loop, means a fresh start."""
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == package or name.startswith(package + ".")) and path and Path(path).is_file():
            files[name] = file_digest(Path(path))
    return fingerprint(sorted(files.items()))


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
        log.warning("%s: saved for other params, data or code; training from scratch", path)
        return None
    return state


def clear_resume_state(folder: Path) -> None:
    (Path(folder) / RESUME_FILE).unlink(missing_ok=True)
