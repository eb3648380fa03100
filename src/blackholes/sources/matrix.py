"""A :class:`Matrix`: one 2-D embedding matrix, where it came from, and how to read its rows.

Every source (a safetensors file or folder, a cached model id, a GGUF file, an Ollama
model, a remote file) ends as a Matrix: ``array`` holds the rows exactly as stored
(float dtypes as numpy values, bf16 as raw ``uint16`` bits, block-quantised GGUF rows
as ``uint8`` bytes), so bit identity is identity of ``array``'s rows;
:meth:`Matrix.float_rows` gives values when an analysis needs them, a chunk at a time.

>>> m = Matrix(np.zeros((4, 3), np.float32), "F32", source="zeros", path=None, key="x")
>>> m.shape, m.float_rows(1, 3).shape
((4, 3), (2, 3))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

CHUNK_BYTES = 8 << 20  # rows read at a time by row_chunks: ~8 MiB of stored bytes


@dataclass(frozen=True)
class Vocabulary:
    """Token strings carried by the model file itself (GGUF metadata), no tokenizer.json needed.

    ``pieces`` are the raw vocabulary entries (``Ġthe``, ``▁the``, ``<0x0A>``), ``text``
    what each decodes to (``None`` where a piece alone is not readable text), ``types``
    the token type of each ("normal", "control", "user_defined", "unused", "byte", ...).
    """

    pieces: list[str]
    text: list[str | None]
    types: list[str] | None = None
    model: str | None = None  # tokenizer model: "gpt2" (byte-level BPE), "llama" (SentencePiece), ...

    @property
    def size(self) -> int:
        return len(self.pieces)


@dataclass
class Matrix:
    """One 2-D embedding matrix, memory-mapped (or held in memory), and where it came from.

    >>> from blackholes import load_matrix
    >>> m = load_matrix(model_dir)
    >>> m.key, m.dtype, m.shape
    ('lm_head.weight', 'F32', (64, 8))
    """

    array: np.ndarray  # [rows, stored units per row]: storage dtype (BF16 as uint16 bits, quantised rows as uint8)
    dtype: str  # safetensors dtype name ("BF16", "F32", ...) or the GGUF tensor type ("Q8_0", "Q4_K", ...)
    source: str  # as the caller gave it
    path: Path | None  # the file holding the tensor (None for an in-memory array or a remote file)
    key: str  # tensor name inside that file
    tokenizer: Path | None = None  # tokenizer.json beside the model, when there is one
    matrix: str | None = None  # "input" / "output" when chosen from a model
    note: str = ""  # why this tensor was picked, for the summary
    format: str = "safetensors"  # "safetensors", "gguf", or "array"
    quantization: str | None = None  # block-quantised GGUF type: identity is of the quantised row bytes
    width: int | None = None  # values per row, when it differs from array.shape[1] (quantised rows)
    vocabulary: Vocabulary | None = None  # token strings stored in the model file (GGUF)
    tied: bool | None = None  # whether the model's output matrix is its input embedding, when known
    revision: str | None = None  # resolved snapshot / blob digest, when the source has one
    bytes_read: int | None = None  # bytes fetched over the network (remote sources)
    url: str | None = None  # the remote file's URL (remote sources)
    dequantize: Callable[[np.ndarray], np.ndarray] | None = None  # stored rows -> float32 values
    inputs: tuple[Path, ...] = ()  # the other local files loading it read: shards, manifest, config, cache entry

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, values per row)."""
        return (int(self.array.shape[0]), int(self.width if self.width is not None else self.array.shape[1]))

    def read_files(self) -> list[Path]:
        """Every local file this matrix was read from (the tensor's file, the tokenizer beside it,
        shards, manifests, config, index, cache entries): what no output may overwrite.

        >>> Matrix(np.zeros((2, 2), np.float32), "F32", "m", Path("m.safetensors"), "x",
        ...        inputs=(Path("config.json"),)).read_files()
        [PosixPath('m.safetensors'), PosixPath('config.json')]
        """
        return [p for p in dict.fromkeys((self.path, self.tokenizer, *self.inputs)) if p is not None]

    def guarded_files(self) -> list[Path]:
        """:meth:`read_files`, and for a model folder (or a cached id) its other weights, config and
        index too: every file no output of a command that read this matrix may replace.

        >>> Matrix(np.zeros((2, 2), np.float32), "F32", "model.safetensors", Path("model.safetensors"), "x").guarded_files()
        [PosixPath('model.safetensors')]
        """
        files = self.read_files()
        if self.path is not None and not Path(self.source).expanduser().is_file():  # a folder or a cached id
            folder = self.path.parent
            files += [folder / "config.json", folder / "model.safetensors.index.json"]
            files += sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.gguf"))
        return files

    def float_rows(self, start: int, stop: int) -> np.ndarray:
        """float32 values of rows ``start:stop`` (widened, or dequantised with the format's own code).

        Never decide identity from these: compare :attr:`array`'s rows.
        """
        rows = self.array[start:stop]
        if self.dequantize is not None:
            return self.dequantize(rows)
        from blackholes.io.dtypes import to_float32

        return to_float32(rows, self.dtype)

    def value_rows(self, start: int, stop: int) -> np.ndarray:
        """Like :meth:`float_rows`, but float32 storage comes back as a view of the memory map (no copy)."""
        if self.dequantize is None and self.array.dtype == np.float32:
            return self.array[start:stop]
        return self.float_rows(start, stop)

    def values(self) -> "RowValues":
        """The rows as values: a ``[rows, width]`` float32 array-like read a slice at a time (block-
        quantised rows dequantised by the format's own code), for every analysis that needs values
        (never the stored bytes of a quantised row).

        >>> v = Matrix(np.ones((4, 3), np.float16), "F16", source="ones", path=None, key="x").values()
        >>> v.shape, v.dtype, v[1:3].dtype, v[[0, 2]].shape
        ((4, 3), dtype('float32'), dtype('float32'), (2, 3))
        """
        return RowValues(self)


class RowValues:
    """A :class:`Matrix`'s values as a read-only float32 array-like: ``shape``, ``dtype``,
    ``len()``, and rows by slice, index or index array (read run by run, never all at once)."""

    def __init__(self, matrix: Matrix):
        self.matrix, self.shape, self.ndim, self.dtype = matrix, matrix.shape, 2, np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return self.matrix.value_rows(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            return self[range(self.shape[0])[key] : range(self.shape[0])[key] + 1][0]
        ids = np.arange(self.shape[0])[key]  # negative ids, masks and bad ids as numpy treats them
        out = np.empty((len(ids), self.shape[1]), np.float32)
        cuts = np.flatnonzero(np.diff(ids) != 1) + 1  # runs of consecutive rows: one read each
        for part in np.split(np.arange(len(ids)), cuts):
            if len(part):
                out[part] = self.matrix.value_rows(int(ids[part[0]]), int(ids[part[-1]]) + 1)
        return out


def row_chunks(rows: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``chunk_bytes`` stored bytes each, covering ``rows``.

    >>> list(row_chunks(10, 4, chunk_bytes=16))
    [(0, 4), (4, 8), (8, 10)]
    """
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)
