"""Loading tensors: memory-mapped, zero-copy views of tensors in safetensors files.

The safetensors format is an 8-byte little-endian header length, a JSON header
(``{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``) and
the raw bytes. ``safetensors.numpy.load_file`` copies every tensor into memory
and has no bfloat16; a scan of one matrix in a multi-GB checkpoint must touch
only that matrix's bytes, so we read the header ourselves and hand numpy a
memory map of exactly one tensor.

bfloat16 (and the fp8 types) have no numpy dtype: they are mapped as unsigned
integers of the same width, which is exactly what a bit-identity comparison
wants; :func:`to_float32` widens them when arithmetic is needed.

>>> info = read_header("model.safetensors")
>>> emb = open_tensor("model.safetensors", "model.embed_tokens.weight")
>>> emb.shape, info.tensors["model.embed_tokens.weight"].dtype
((151936, 2560), 'BF16')
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BlackholesError

# safetensors dtype -> numpy dtype used to *store/view* the bytes.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # no numpy bfloat16: raw bits
    "F8_E4M3": np.dtype("<u1"),  # raw bits
    "F8_E5M2": np.dtype("<u1"),  # raw bits
}

# The inverse for writing: numpy dtype -> safetensors dtype name.
SAFETENSORS_DTYPES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype("<u1"): "U8",
    np.dtype("<i1"): "I8",
    np.dtype("<u2"): "U16",
    np.dtype("<i2"): "I16",
    np.dtype("<u4"): "U32",
    np.dtype("<i4"): "I32",
    np.dtype("<u8"): "U64",
    np.dtype("<i8"): "I64",
    np.dtype("<f2"): "F16",
    np.dtype("<f4"): "F32",
    np.dtype("<f8"): "F64",
}

_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    name: str
    dtype: str  # safetensors name: "BF16", "F32", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """The parsed header of a safetensors file."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header without reading any tensor data.

    Raises :class:`BlackholesError` with a one-line reason for a missing file,
    a file that is not safetensors, a truncated or corrupt header.

    >>> h = read_header("model.safetensors")
    >>> sorted(h.tensors)[:2]
    ['lm_head.weight', 'model.embed_tokens.weight']
    """
    path = Path(path)
    if not path.exists():
        raise BlackholesError(f"no such file: {path}")
    if path.is_dir():
        raise BlackholesError(f"expected a .safetensors file, got a directory: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BlackholesError(f"not a safetensors file (only {size} bytes): {path}")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise BlackholesError(
                    f"not a safetensors file, or its header is truncated "
                    f"(header length {n}, file size {size}): {path}"
                )
            raw = f.read(n)
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BlackholesError(f"not a safetensors file (corrupt JSON header): {path}") from None
    if not isinstance(doc, dict):
        raise BlackholesError(f"not a safetensors file (header is not a JSON object): {path}")

    data_start = 8 + n
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise BlackholesError(f"corrupt safetensors header (bad __metadata__): {path}")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise BlackholesError(f"corrupt safetensors header (bad entry {name!r}): {path}") from None
        if dtype not in STORAGE_DTYPES:
            raise BlackholesError(f"unsupported dtype {dtype!r} for tensor {name!r} in {path}")
        expected = int(np.prod(shape, dtype=np.int64)) * STORAGE_DTYPES[dtype].itemsize
        if any(s < 0 for s in shape) or begin < 0 or end - begin != expected:
            raise BlackholesError(
                f"corrupt safetensors header (tensor {name!r}: shape {list(shape)} "
                f"does not match its {end - begin} bytes): {path}"
            )
        if data_start + end > size:
            raise BlackholesError(
                f"truncated safetensors file (tensor {name!r} ends at byte "
                f"{data_start + end}, file has {size}): {path}"
            )
        tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
    return Header(path=path, tensors=tensors, metadata=dict(metadata), data_start=data_start)


def open_tensor(path: str | os.PathLike, key: str, header: Header | None = None) -> np.ndarray:
    """Memory-map one tensor read-only, in its storage dtype (bf16 as raw ``uint16``).

    Only the pages actually touched are read from disk.

    >>> emb = open_tensor("run.safetensors", "embeddings")   # (steps+1, V, D)
    """
    header = header or read_header(path)
    try:
        info = header.tensors[key]
    except KeyError:
        keys = ", ".join(sorted(header.tensors)) or "(none)"
        raise BlackholesError(f"tensor {key!r} not found in {header.path}; keys: {keys}") from None
    return map_tensor(header.path, info)


def map_tensor(path: str | os.PathLike, info: TensorInfo) -> np.ndarray:
    """Memory-map the tensor described by ``info`` (see :func:`read_header`)."""
    dtype = STORAGE_DTYPES[info.dtype]
    if info.nbytes == 0:
        return np.empty(info.shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=info.start, shape=info.shape)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a tensor (as returned by :func:`open_tensor`) to float32 for arithmetic.

    bf16 widening is exact (bf16 is the top half of a float32). Never use the
    result to decide identity: compare raw bits instead.

    >>> to_float32(open_tensor(p, "embeddings")[5], "BF16")
    """
    if dtype == "BF16":
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        raise BlackholesError(f"arithmetic on {dtype} tensors is not supported; compare bits instead")
    return np.asarray(array).astype(np.float32)


def bf16_from_float32(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest-even), returned as raw ``uint16`` bits."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():
        out[nan] = (bits[nan] >> 16).astype(np.uint16) | 0x0040  # keep NaN a quiet NaN
    return out
