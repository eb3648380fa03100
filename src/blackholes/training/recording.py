"""Streaming a training run, step by step, into one safetensors file.

A recording has one tensor per quantity, indexed by record (record 0 = the
initialisation): ``embeddings`` / ``grads`` / ``momentum`` / ``variance``
``[R, V, D]``, ``logits`` ``[R, V]``, ``losses`` / ``grad_norms`` ``[R]`` (and, in
``bf16-mixed`` precision, ``embeddings_bf16`` ``[R, V, D]``). Because the number of
records R is known before training starts, the whole safetensors header (every
tensor's byte offsets) is computed up front; the file is preallocated and each
block of steps is written straight to its offsets. Memory therefore stays flat
however long the run is. The header says ``complete: false`` until the last record
is on disk; :meth:`RecordingWriter.rewrite_metadata` then marks it complete in place.

safetensors files may have no holes, so a run that stops early is *compacted*:
each tensor's first k records are moved down, the header is rewritten with the
shorter shapes (``complete: false``, ``interrupted_at_step``) and the file is
truncated. The header region is reserved with spare room so the new header
always fits in place.

Every metadata value is JSON-encoded (``json.loads`` reads each one back). The
reader, :class:`~blackholes.io.recording.Recording`, and the metadata helpers live in
:mod:`blackholes.io.recording`: reading a recording needs none of the training code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blackholes.io.dtypes import STORAGE_DTYPES

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
        return math.prod(self.shape) * STORAGE_DTYPES[self.dtype].itemsize  # Python ints: no overflow


def recording_specs(config) -> list[TensorSpec]:
    """What a recording of this :class:`~blackholes.training.config.TrainConfig` holds, in file order.

    The recorded tensors are in the dtype of the weights the optimizer updates (bf16, or
    fp32 for ``fp32`` and ``bf16-mixed``); ``bf16-mixed`` adds ``embeddings_bf16``, the
    bf16 copy of each recorded ``embeddings`` that the next forward pass reads.

    >>> from blackholes.training.config import TrainConfig
    >>> [(s.name, s.dtype) for s in recording_specs(TrainConfig(precision="bf16-mixed", optimizer_state=False))]
    [('embeddings', 'F32'), ('grads', 'F32'), ('logits', 'F32'), ('losses', 'F32'), ('grad_norms', 'F32'), ('embeddings_bf16', 'BF16')]
    """
    from blackholes.training.precision import precision

    mode = precision(config.precision)
    st, V, D = mode.record_dtype, config.vocab, config.width
    specs = [TensorSpec("embeddings", st, (V, D)), TensorSpec("grads", st, (V, D)),
             TensorSpec("logits", st, (V,)), TensorSpec("losses", st, ())]
    if config.optimizer_state:
        specs += [TensorSpec("momentum", st, (V, D)), TensorSpec("variance", st, (V, D))]
    specs.append(TensorSpec("grad_norms", st, ()))  # added after the original keys: their offsets do not move
    if mode.autocast:
        specs.append(TensorSpec("embeddings_bf16", "BF16", (V, D)))
    return specs


# ---------------------------------------------------------------------------- writing


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

    >>> w = RecordingWriter(tmp, specs, records=10001, metadata=encode_metadata(meta))  # doctest: +SKIP
    >>> w.write("embeddings", 0, block)      # block: [k, V, D] in storage dtype          # doctest: +SKIP
    >>> w.close()                            # or w.truncate(k_done, new_metadata)       # doctest: +SKIP
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

    def rewrite_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the header's metadata in place (same records, same reserved header size).

        The training loop writes ``complete: false`` up front and calls this once the
        last record is on disk, so a file caught half-written never claims to be whole.
        """
        self._write_at(0, _header_bytes(self.specs, self.records, metadata, size=self.data_start - 8))

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
