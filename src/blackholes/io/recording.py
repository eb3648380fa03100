"""Reading a training recording: the memory-mapped reader and the recording's metadata.

A recording (written by :mod:`blackholes.training.recording` while ``blackholes train``
runs) is one safetensors file with one tensor per quantity, indexed by record
(record 0 = the initialisation): ``embeddings`` / ``grads`` / ``momentum`` / ``variance``
``[R, V, D]``, ``logits`` ``[R, V]``, ``losses`` / ``grad_norms`` ``[R]``. Every metadata
value is JSON-encoded. :class:`Recording` is the one reader (memory-mapped, numpy only:
the analyses and sources read recordings without the training code); for the metadata
alone, :func:`read_recording_metadata`.

>>> rec = Recording("run.safetensors")                       # doctest: +SKIP
>>> rec.steps[-1], rec.complete, rec.metadata["never_seen"][:3]  # doctest: +SKIP
(10000, True, [0, 1, 2])
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import BITS
from blackholes.io.safetensors import Header, map_tensor, read_header, tensor_info


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
