"""Crash-safe writes and checksums.

Every pipeline output is written under a temporary name and renamed into place only when it is
complete, so a killed run never leaves a file or folder that a later run (or DVC) would trust. The
temporaries a killed run leaves (``.tmp-<pid>-<name>``) are removed by the next process that writes an
output: DVC may restore the killed stage from its run cache without running it, so it cannot be the one.
A full disk is reported with the path being written.

Fault injection (tests/test_faults.py): ``TUMORSEG_FAULT=<path suffix>[:<n>]`` makes the process SIGKILL
itself at the n-th (default first) completed write of an output whose path ends with that suffix, just
before it would be renamed into place: the worst moment, all work done and nothing committed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20
FAULT_ENV = "TUMORSEG_FAULT"
_fault_hits: dict[str, int] = {}
_swept = False
# Where the pipeline writes its outputs (relative to the repository root, where DVC runs every stage).
OUTPUT_ROOTS = ("data", "models", "inference", "evaluation", "metrics", "reports", "checkpoints")
_TEMPORARY = re.compile(r"^\.(tmp|old)-(\d+)-")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tmp_sibling(path: Path) -> Path:
    # The original name stays at the end so suffix-sniffing writers (nibabel: .nii.gz) still work.
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(root: str | Path = ".") -> list[Path]:
    """Remove ``.tmp-<pid>-*`` / ``.old-<pid>-*`` files and folders left by killed runs (their process is gone) in
    the output folders under ``root``, two levels deep (data/, models/<model>/, ...). Returns what was removed."""
    removed = []
    for top in OUTPUT_ROOTS:
        base = Path(root) / top
        if not base.is_dir():
            continue
        for folder in [base, *(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))]:
            for entry in folder.iterdir():
                match = _TEMPORARY.match(entry.name)
                if match and not _pid_alive(int(match.group(2))):
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                    removed.append(entry)
    return removed


def _sweep_once() -> None:
    """Sweep once per process, and only in a tumorseg project root (where DVC runs the stages): never in whatever
    folder a `tumorseg predict` happens to be started from."""
    global _swept
    if not _swept:
        _swept = True
        root = Path.cwd()
        if (root / "dvc.yaml").is_file() and (root / "params.yaml").is_file():
            remove_stale_temporaries(root)


def _maybe_fault(path: Path) -> None:
    """The fault-injection hook (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    suffix, _, nth = spec.partition(":")
    if path.as_posix().endswith(suffix):
        _fault_hits[suffix] = _fault_hits.get(suffix, 0) + 1
        if _fault_hits[suffix] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _disk_errors_named(path: Path) -> Iterator[None]:
    """A full disk (or quota) says which output could not be written; the partial temporary is removed by the caller."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, f"{os.strerror(exc.errno)} while writing {path}; nothing was written there (free "
                                     f"space on {path.parent.resolve()} and rerun)") from exc
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    _sweep_once()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with _disk_errors_named(path):
            yield tmp
        _maybe_fault(path)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; swap it in for ``path`` only when the block succeeds."""
    path = Path(path)
    _sweep_once()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".tmp-*-{path.name}"):
        shutil.rmtree(stale, ignore_errors=True)  # left behind by a killed run
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        with _disk_errors_named(path):
            yield tmp
        _maybe_fault(path)
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
