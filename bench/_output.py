"""Shared by the bench scripts: print the result and, with --out, keep it as a markdown file; name the CPU; clone the
repository for a run that starts from nothing."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path


def emit(text: str, out: Path | None) -> None:
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def cpu_model() -> str:
    """The CPU's model name, so a result says which machine it came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fresh_clone(repo: Path, work: Path, why: str) -> tuple[Path, str]:
    """A new clone of ``repo``'s committed HEAD at ``work``/repo and its short commit; refuses an existing one (``why``
    says what starting from nothing is for)."""
    clone = work / "repo"
    if clone.exists():
        sys.exit(f"{clone} exists: remove it ({why})")
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()
    return clone, commit
