"""Resume checkpoints: the state a killed training continues from.

``checkpoints/<model>/last.pt`` (git- and DVC-ignored, kept between runs) holds everything needed
to continue a killed training exactly where it stopped; written atomically after every epoch and
deleted when training completes. It carries a fingerprint of the params and data, and is ignored
(with a message) when they changed. The final model files are ``tumorseg.models.io``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from tumorseg.fileio import atomic_file

log = logging.getLogger(__name__)

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
