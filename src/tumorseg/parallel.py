"""Process-parallel map with a progress bar and results in input order (for reproducibility).

Workers start with ``forkserver``, not ``fork``: a parent that has already run torch (OpenMP)
deadlocks forked children that use it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
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
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
        return results
    finally:
        bar.close()
