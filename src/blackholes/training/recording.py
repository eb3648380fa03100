"""Streaming a training run, step by step, into one safetensors file — and reading it back.

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

Every metadata value is JSON-encoded (``json.loads`` reads each one back).
:class:`Recording` is the one reader (memory-mapped, no torch); for the metadata
alone, :func:`read_recording_metadata`:

>>> rec = Recording("run.safetensors")                       # doctest: +SKIP
>>> rec.steps[-1], rec.complete, rec.metadata["never_seen"][:3]  # doctest: +SKIP
(10000, True, [0, 1, 2])
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import BITS, STORAGE_DTYPES
from blackholes.io.safetensors import Header, map_tensor, read_header, tensor_info

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


def encode_metadata(values: dict) -> dict[str, str]:
    """JSON-encode every value (safetensors metadata is str -> str).

    >>> encode_metadata({"sigma": 0.0, "complete": True})
    {'sigma': '0.0', 'complete': 'true'}
    """
    return {k: json.dumps(v, separators=(",", ":"), allow_nan=False) for k, v in values.items()}


def decode_metadata(metadata: dict[str, str]) -> dict:
    """The inverse of :func:`encode_metadata`; a value that is not JSON (or not within
    :func:`~blackholes.io.untrusted.parse_json`'s limits: a recording is a file from outside) stays a string."""
    from blackholes.io.untrusted import parse_json

    out = {}
    for k, v in metadata.items():
        try:
            out[k] = parse_json(v, what=k) if isinstance(v, str) else v
        except BlackholesError:
            out[k] = v
    return out


def recorded_numerics(metadata: dict) -> str | None:
    """The numerics a recording was trained with: its ``numerics`` metadata, else (a recording made
    before numerics were part of the recipe) what its ``compiled`` field says, else None.

    >>> recorded_numerics({"compiled": True}), recorded_numerics({"numerics": "eager", "compiled": False})
    ('compiled', 'eager')
    >>> recorded_numerics({}) is None
    True
    """
    value = metadata.get("numerics")
    if isinstance(value, str):
        return value
    compiled = metadata.get("compiled")
    return ("compiled" if compiled else "eager") if isinstance(compiled, bool) else None


def read_recording_metadata(path: str | os.PathLike) -> dict:
    """The decoded ``__metadata__`` of a recording (``{}`` for the original notebooks' files).

    A thin wrapper: the header alone is read, no tensor is checked (see :class:`Recording`).

    >>> read_recording_metadata("run.safetensors")["sigma"]   # doctest: +SKIP
    0.0
    """
    return decode_metadata(read_header(path).metadata)


# ---------------------------------------------------------------------------- reading

# Per-record shape of each known tensor, in terms of the embeddings' [R, V, D].
_MATRIX_KEYS = ("grads", "momentum", "variance", "embeddings_bf16")  # [R, V, D]
_SCALAR_KEYS = ("losses", "grad_norms")  # [R]


class Recording:
    """A training recording opened for reading: header checked, tensors memory-mapped on demand.

    ``require`` names the tensors the caller needs (``embeddings`` always); a file
    without them, or whose known tensors disagree in shape with ``embeddings``, or
    whose ``steps`` metadata does not list one increasing training step per record,
    is refused with one line. Without ``steps`` metadata record *i* is step *i*.

    >>> rec = Recording("run.safetensors", require=("grads", "logits"))   # doctest: +SKIP
    >>> rec.dtype, rec.vocab, rec.dim, len(rec), rec.complete              # doctest: +SKIP
    ('BF16', 128, 64, 10001, True)
    >>> rec.tensor("embeddings")[-1]          # numpy memmap, bf16 as raw uint16   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, require: tuple[str, ...] = (), unfinished: bool = False):
        self.header: Header = read_header(path)
        self.path = Path(self.header.path)
        self.metadata: dict = decode_metadata(self.header.metadata)
        # keys whose raw value was not text (some tools write numbers): decoded as given
        self.not_strings = [k for k, v in self.header.metadata.items() if not isinstance(v, str)]
        required = ("embeddings", *[k for k in require if k != "embeddings"])
        self._check_tensors(required)
        if not unfinished:  # unfinished=True: look at a file still being written (its header only)
            self._check_finished()
        self.steps: np.ndarray = self._read_steps()

    # -- checks, each one line ------------------------------------------------

    def _check_tensors(self, required: tuple[str, ...]) -> None:
        tensors = self.header.tensors
        missing = [k for k in required if k not in tensors]
        if missing:
            keys = ", ".join(sorted(tensors)) or "(none)"
            raise BlackholesError(
                f"not a training recording: missing tensor(s) {', '.join(missing)} in {self.path} (it has: {keys})"
            )
        for k in required:
            if tensors[k].dtype not in BITS:
                raise BlackholesError(f"tensor {k!r} has dtype {tensors[k].dtype}; expected BF16, F16, F32 or F64")
        emb = tensors["embeddings"].shape
        if len(emb) != 3:
            raise BlackholesError(f"'embeddings' must be [steps, vocab, dim], got shape {list(emb)}")
        expected = {k: emb for k in _MATRIX_KEYS} | {k: emb[:1] for k in _SCALAR_KEYS} | {"logits": emb[:2]}
        for k, shape in expected.items():
            if k in tensors and tensors[k].shape != shape:
                raise BlackholesError(
                    f"shapes disagree: 'embeddings' is {list(emb)} but {k!r} is {list(tensors[k].shape)} "
                    f"(expected {list(shape)})"
                )

    def _check_finished(self) -> None:
        """A file whose header still says what it said while being written (``complete: false``
        and no ``interrupted_at_step``) is a run in progress or one that was killed outright:
        its unwritten records are zeros, and analysing them would invent a black hole."""
        if self.metadata.get("complete") is False and "interrupted_at_step" not in self.metadata:
            raise BlackholesError(f"{self.path} is a recording still being written, or left by a run that was "
                                  "killed (complete: false, never finalised); its unwritten steps are not data")

    def _read_steps(self) -> np.ndarray:
        n = len(self)
        steps = self.metadata.get("steps")
        if steps is None:
            return np.arange(n, dtype=np.int64)
        ok = isinstance(steps, list) and len(steps) == n
        if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62 for s in steps):
            raise BlackholesError(
                f"recording metadata 'steps' must list {n} integer training steps (one per recorded index, "
                f"each from 0 to 2**62)"
            )
        arr = np.asarray(steps, dtype=np.int64)
        if n and (arr[0] != 0 or np.any(np.diff(arr) <= 0)):
            raise BlackholesError("recording metadata 'steps' must start at 0 and increase")
        return arr

    # -- what a reader asks ---------------------------------------------------

    def __len__(self) -> int:
        """Number of records."""
        return self.header.tensors["embeddings"].shape[0]

    def __contains__(self, name: str) -> bool:
        return name in self.header.tensors

    @property
    def keys(self) -> list[str]:
        return sorted(self.header.tensors)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(records, vocab, dim)`` of ``embeddings``."""
        return self.header.tensors["embeddings"].shape

    @property
    def vocab(self) -> int:
        return self.shape[1]

    @property
    def dim(self) -> int:
        return self.shape[2]

    @property
    def dtype(self) -> str:
        """The safetensors dtype of ``embeddings`` (the weights the optimizer updates)."""
        return self.header.tensors["embeddings"].dtype

    def dtype_of(self, name: str) -> str:
        return tensor_info(self.header, name).dtype

    @property
    def complete(self) -> bool | None:
        """The ``complete`` metadata (None when the file has none, e.g. the original notebooks')."""
        value = self.metadata.get("complete")
        return value if isinstance(value, bool) else None

    @property
    def precision(self) -> str | None:
        """The training precision: ``precision`` metadata, else the older ``dtype`` key, else None."""
        value = self.metadata.get("precision", self.metadata.get("dtype"))
        return value if isinstance(value, str) else None

    @property
    def numerics(self) -> str | None:
        """The training numerics, ``eager`` or ``compiled`` (:func:`recorded_numerics`; None when unknown)."""
        return recorded_numerics(self.metadata)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` memory-mapped read-only, in its storage dtype (bf16 as raw ``uint16``)."""
        return map_tensor(self.path, tensor_info(self.header, name))

    def to_json(self) -> dict:
        return {"path": str(self.path), "dtype": self.dtype, "shape": list(self.shape), "keys": self.keys,
                "steps": [int(self.steps[0]), int(self.steps[-1])] if len(self) else [],
                "complete": self.complete, "precision": self.precision, "numerics": self.numerics}


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
