"""Small training data and configs shared by the tests in tests/training/ (fast, eager runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blackholes.training.config import TrainConfig


def write_corpus(path: Path, n: int = 3000, seed: int = 0) -> Path:
    """``n`` random bytes over the 12 values 3..14: the other 20 of a 32-byte vocabulary never occur."""
    rng = np.random.default_rng(seed)
    path.write_bytes(np.arange(3, 15, dtype=np.uint8)[rng.integers(0, 12, n)].tobytes())
    return path


def small(corpus, **kw) -> TrainConfig:
    """A tiny eager run over ``corpus`` (32-byte vocabulary, width 16, one layer)."""
    base = dict(corpus=str(corpus), steps=12, vocab=32, context=16, width=16, layers=1, heads=2)  # eager: the default
    return TrainConfig(**{**base, **kw})


def bits(array: np.ndarray) -> np.ndarray:
    """An unsigned-integer view of a float (or raw bf16) array: equality is bit identity."""
    array = np.asarray(array)
    return array.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[array.dtype.itemsize])


SMALL_CLI = ["--vocab", "32", "--context", "16", "--width", "16", "--layers", "1", "--no-compile"]
