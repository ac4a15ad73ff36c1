"""One process pool with a progress bar for every per-item stage (synth, scan, prepare)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def parallel_map(fn, items: list, workers: int, desc: str, unit: str, initializer=None):
    """``map(fn, items)`` in order, in ``workers`` processes (in this one when ``workers`` is 1)."""
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=initializer) as pool:
            yield from tqdm(pool.map(fn, items), total=len(items), desc=desc, unit=unit, disable=None)
    else:
        if initializer:
            initializer()
        yield from tqdm(map(fn, items), total=len(items), desc=desc, unit=unit, disable=None)
