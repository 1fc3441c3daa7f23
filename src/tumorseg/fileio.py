"""Crash-safe writes and checksums.

Every pipeline output is written under a temporary name and renamed into place only when it is
complete, so a killed run never leaves a file or folder that a later run (or DVC) would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tmp_sibling(path: Path) -> Path:
    # The original name stays at the end so suffix-sniffing writers (nibabel: .nii.gz) still work.
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; swap it in for ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".tmp-*-{path.name}"):
        shutil.rmtree(stale, ignore_errors=True)  # left behind by a killed run
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".old-{os.getpid()}-{path.name}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df, path: str | Path) -> None:
    """Deterministic Parquet (no pandas index, fixed compression) written atomically."""
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd")
