"""Process-parallel map with a progress bar and results in input order (for reproducibility)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

A = TypeVar("A")
R = TypeVar("R")


def parallel_map(fn: Callable[[A], R], items: Sequence[A], workers: int = 1, desc: str = "", progress: bool = True) -> list[R]:
    bar = tqdm(total=len(items), desc=desc, unit="case", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(items) <= 1:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update()
            return out
        results: list = [None] * len(items)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
        return results
    finally:
        bar.close()
