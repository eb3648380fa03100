"""Small data shared by the scan tests."""

from __future__ import annotations

import numpy as np


def planted(n=300, d=40, dtype=np.float32, seed=0, sizes=(7, 5, 5, 2)):
    """A random [n, d] matrix in which groups of ``sizes`` rows share one vector, bit for bit."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    picks = rng.permutation(n)[: sum(sizes)]
    start = 0
    for size in sizes:
        x[picks[start : start + size]] = x[picks[start]]
        start += size
    return x
