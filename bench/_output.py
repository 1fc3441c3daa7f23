"""Shared by the bench scripts: print the result and, with --out, keep it as a markdown file."""

from __future__ import annotations

from pathlib import Path


def emit(text: str, out: Path | None) -> None:
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
