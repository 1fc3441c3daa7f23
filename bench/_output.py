"""Shared by the bench scripts: print the result and, with --out, keep it as a markdown file; name the CPU."""

from __future__ import annotations

import platform
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
