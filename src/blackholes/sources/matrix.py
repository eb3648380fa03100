"""A :class:`Matrix`: one 2-D embedding matrix and where it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Matrix:
    """One 2-D embedding matrix, memory-mapped, and where it came from.

    >>> m = load_matrix("Qwen/Qwen3-4B-Instruct-2507")
    >>> m.key, m.dtype, m.shape
    ('lm_head.weight', 'BF16', (151936, 2560))
    """

    array: np.ndarray  # 2-D, storage dtype (BF16 as raw uint16 bits); a memmap when read from disk
    dtype: str  # safetensors dtype name: "BF16", "F32", ...
    source: str  # as the caller gave it
    path: Path | None  # the .safetensors file holding the tensor (None for an in-memory array)
    key: str  # tensor name inside that file
    tokenizer: Path | None = None  # tokenizer.json beside the model, when there is one
    matrix: str | None = None  # "input" / "output" when chosen from a model folder
    note: str = ""  # why this tensor was picked, for the summary

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]
