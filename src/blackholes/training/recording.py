"""Streaming a training run, step by step, into one safetensors file.

A recording has one tensor per quantity, indexed by record (record 0 = the
initialisation): ``embeddings`` / ``grads`` / ``momentum`` / ``variance``
``[R, V, D]``, ``logits`` ``[R, V]``, ``losses`` ``[R]``. Because the number of
records R is known before training starts, the whole safetensors header (every
tensor's byte offsets) is computed up front; the file is preallocated and each
block of steps is written straight to its offsets. Memory
therefore stays flat however long the run is.

safetensors files may have no holes, so a run that stops early is *compacted*:
each tensor's first k records are moved down, the header is rewritten with the
shorter shapes (``complete: false``, ``interrupted_at_step``) and the file is
truncated. The header region is reserved with spare room so the new header
always fits in place.

Every metadata value is JSON-encoded (``json.loads`` reads each one back);
:func:`read_recording_metadata` does that for you, without torch.

>>> meta = read_recording_metadata("run.safetensors")
>>> meta["never_seen"][:3], meta["complete"], meta["steps"][-1]
([0, 1, 2], True, 10000)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blackholes.io.dtypes import STORAGE_DTYPES
from blackholes.io.safetensors import read_header

_HEADER_RESERVE = 512  # spare header bytes, so an interrupted run's header fits in place
_COPY_CHUNK = 16 << 20  # bytes moved at a time when compacting


@dataclass(frozen=True)
class TensorSpec:
    """One recorded quantity: its safetensors dtype and the shape of one record."""

    name: str
    dtype: str  # "BF16" | "F32" | ...
    shape: tuple[int, ...]  # per record, e.g. (V, D)

    @property
    def record_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * STORAGE_DTYPES[self.dtype].itemsize


def encode_metadata(values: dict) -> dict[str, str]:
    """JSON-encode every value (safetensors metadata is str -> str).

    >>> encode_metadata({"sigma": 0.0, "complete": True})
    {'sigma': '0.0', 'complete': 'true'}
    """
    return {k: json.dumps(v, separators=(",", ":"), allow_nan=False) for k, v in values.items()}


def decode_metadata(metadata: dict[str, str]) -> dict:
    """The inverse of :func:`encode_metadata`; a value that is not JSON stays a string."""
    out = {}
    for k, v in metadata.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def read_recording_metadata(path: str | os.PathLike) -> dict:
    """The decoded ``__metadata__`` of a recording (``{}`` for the original notebooks' files).

    >>> read_recording_metadata("run.safetensors")["sigma"]
    0.0
    """
    return decode_metadata(read_header(path).metadata)


def _header_bytes(specs: list[TensorSpec], records: int, metadata: dict[str, str], size: int | None = None) -> bytes:
    """The 8-byte length + JSON header for ``records`` records of each spec, space-padded.

    Padded to ``size`` bytes when given (raises ``ValueError`` if it does not fit),
    else to the JSON length plus a reserve, rounded up to a multiple of 8 so the
    data that follows stays aligned.
    """
    doc: dict = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        nbytes = records * spec.record_bytes
        doc[spec.name] = {"dtype": spec.dtype, "shape": [records, *spec.shape], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if size is None:
        size = -(-(len(text) + _HEADER_RESERVE) // 8) * 8
    elif len(text) > size:
        raise ValueError(f"header of {len(text)} bytes does not fit in {size}")
    return len(text.ljust(size)).to_bytes(8, "little") + text.ljust(size)


class RecordingWriter:
    """Write ``records`` records of each spec into a preallocated safetensors file.

    >>> w = RecordingWriter(tmp, specs, records=10001, metadata=encode_metadata(meta))
    >>> w.write("embeddings", 0, block)      # block: [k, V, D] in storage dtype
    >>> w.close()                            # or w.truncate(k_done, new_metadata)
    """

    def __init__(self, path: str | os.PathLike, specs: list[TensorSpec], records: int, metadata: dict[str, str]):
        self.path = Path(path)
        self.specs = list(specs)
        self.records = records
        header = _header_bytes(self.specs, records, metadata)
        self.data_start = len(header)
        self._offset: dict[str, int] = {}
        self._spec = {s.name: s for s in self.specs}
        offset = self.data_start
        for spec in self.specs:
            self._offset[spec.name] = offset
            offset += records * spec.record_bytes
        self.size = offset
        self._file = open(self.path, "r+b" if self.path.exists() else "w+b")  # noqa: SIM115 (closed by close())
        try:
            self._file.truncate(self.size)  # sparse until written
            self._write_at(0, header)
        except BaseException:
            self.close()
            raise

    def _write_at(self, offset: int, data) -> None:
        self._file.seek(offset)
        self._file.write(data)

    def write(self, name: str, start: int, block: np.ndarray) -> None:
        """Write records ``start .. start+len(block)-1`` of tensor ``name`` (one write)."""
        spec = self._spec[name]
        block = np.ascontiguousarray(block)
        if block.shape[1:] != spec.shape or block.dtype.itemsize != STORAGE_DTYPES[spec.dtype].itemsize:
            raise ValueError(f"{name}: block {block.shape} {block.dtype} does not match {spec}")
        if start < 0 or start + len(block) > self.records:
            raise ValueError(f"{name}: records {start}..{start + len(block)} outside 0..{self.records}")
        self._write_at(self._offset[name] + start * spec.record_bytes, memoryview(block).cast("B"))

    def truncate(self, records: int, metadata: dict[str, str]) -> None:
        """Shrink the file in place to its first ``records`` records, with new metadata.

        Each tensor's kept bytes move down (never up), so a forward chunked copy
        is safe; the header keeps its reserved size.
        """
        if not 1 <= records <= self.records:
            raise ValueError(f"cannot keep {records} of {self.records} records")
        header = _header_bytes(self.specs, records, metadata, size=self.data_start - 8)
        dst = self.data_start
        for spec in self.specs:
            src, nbytes = self._offset[spec.name], records * spec.record_bytes
            for pos in range(0, nbytes, _COPY_CHUNK):
                self._file.seek(src + pos)
                chunk = self._file.read(min(_COPY_CHUNK, nbytes - pos))
                self._write_at(dst + pos, chunk)
            self._offset[spec.name] = dst
            dst += nbytes
        self._file.truncate(dst)
        self._write_at(0, header)
        self.records, self.size = records, dst

    def close(self) -> None:
        """Flush and close the file (the caller fsyncs and renames it)."""
        if self._file is not None:
            self._file.close()
            self._file = None
