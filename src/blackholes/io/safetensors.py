"""The safetensors format: headers, memory-mapped tensors, and writing.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``) and
the raw bytes. ``safetensors.numpy.load_file`` copies every tensor into memory
and has no bfloat16; a scan of one matrix in a multi-GB checkpoint must touch
only that matrix's bytes, so the header is read here and numpy gets a memory
map of exactly one tensor.

>>> h = read_header(model_file)
>>> emb = open_tensor(model_file, "model.embed_tokens.weight")
>>> emb.shape, h.tensors["model.embed_tokens.weight"].dtype
((64, 8), 'BF16')
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import SAFETENSORS_DTYPES, STORAGE_DTYPES

MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


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

    path: Path  # or the URL of a remote file
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header without reading any tensor data.

    Raises :class:`BlackholesError` with a one-line reason for a missing file,
    a file that is not safetensors, a truncated or corrupt header.

    >>> h = read_header(model_file)
    >>> sorted(h.tensors)
    ['lm_head.weight', 'model.embed_tokens.weight']
    """
    from blackholes.io.paths import input_file

    path = Path(path)
    if path.is_dir():
        raise BlackholesError(f"expected a .safetensors file, got a directory: {path}")
    path = input_file(path)  # missing, a FIFO or a device: one line, never a read that blocks
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = header_length(f.read(8), size, path)
            raw = f.read(n)
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_header(raw, size, path)


def header_length(head: bytes, size: int, where) -> int:
    """The JSON header's length from a file's first 8 bytes, checked against its ``size``."""
    if len(head) < 8:
        raise BlackholesError(f"not a safetensors file (only {size} bytes): {where}")
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > MAX_HEADER or 8 + n > size:
        raise BlackholesError(
            f"not a safetensors file, or its header is truncated (header length {n}, file size {size}): {where}"
        )
    return n


def parse_header(raw: bytes, size: int, where) -> Header:
    """Validate the JSON header ``raw`` of a file of ``size`` bytes (``where`` names it:
    a path, or a URL for a remote file); every tensor must lie inside the file."""
    from blackholes.io.untrusted import parse_json

    doc = parse_json(raw, what=f"not a safetensors file (corrupt JSON header): {where}")
    if not isinstance(doc, dict):
        raise BlackholesError(f"not a safetensors file (header is not a JSON object): {where}")
    data_start = 8 + len(raw)
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise BlackholesError(f"corrupt safetensors header (bad __metadata__): {where}")
    tensors = {name: _tensor_entry(name, entry, data_start, size, where) for name, entry in doc.items()}
    return Header(path=where, tensors=tensors, metadata=dict(metadata))


def _tensor_entry(name: str, entry, data_start: int, size: int, path) -> TensorInfo:
    """Validate one header entry. Dtypes we cannot read are kept (the file may hold
    other tensors we can); only their byte count goes unchecked."""

    def bad(why: str) -> BlackholesError:
        return BlackholesError(f"corrupt safetensors header (tensor {name!r}: {why}): {path}")

    if not isinstance(entry, dict):
        raise bad("entry is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad(f"dtype {dtype!r} is not a name")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"data_offsets {offsets!r} is not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets {offsets} end before they begin")
    if dtype in STORAGE_DTYPES:
        expected = math.prod(shape) * STORAGE_DTYPES[dtype].itemsize  # Python ints: no overflow
        if end - begin != expected:
            raise bad(f"shape {shape} does not match its {end - begin} bytes")
    if data_start + end > size:
        raise BlackholesError(
            f"truncated safetensors file (tensor {name!r} ends at byte "
            f"{data_start + end}, file has {size}): {path}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def open_tensor(path: str | os.PathLike, key: str, header: Header | None = None) -> np.ndarray:
    """Memory-map one tensor read-only, in its storage dtype (bf16 as raw ``uint16``).

    Only the pages actually touched are read from disk.

    >>> open_tensor("run.safetensors", "embeddings").shape   # (records, V, D) of a training recording
    (3, 16, 8)
    """
    header = header or read_header(path)
    return map_tensor(header.path, tensor_info(header, key))


def map_tensor(path: str | os.PathLike, info: TensorInfo) -> np.ndarray:
    """Memory-map the tensor described by ``info`` (see :func:`read_header`)."""
    dtype = STORAGE_DTYPES.get(info.dtype)
    if dtype is None:
        raise BlackholesError(
            f"tensor {info.name!r} in {path} has dtype {info.dtype}, which blackholes cannot read "
            f"(supported: {', '.join(STORAGE_DTYPES)})"
        )
    if info.nbytes == 0:
        return np.empty(info.shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=info.start, shape=info.shape)


def tensor_info(header: Header, key: str) -> TensorInfo:
    """``header.tensors[key]``, or an error that lists the keys there are."""
    try:
        return header.tensors[key]
    except KeyError:
        keys = ", ".join(sorted(header.tensors)) or "(none)"
        raise BlackholesError(f"tensor {key!r} not found in {header.path}; keys: {keys}") from None


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, atomically; bf16 stays bf16.

    ``tensors`` maps a name to an array (its numpy dtype gives the safetensors dtype)
    or to ``(array, "BF16")`` for raw bf16 bits held as ``uint16`` (likewise the fp8
    types as ``uint8``) — which ``safetensors.numpy`` cannot write. Readable by
    ``safetensors.torch.load_file`` and by :func:`open_tensor`.

    >>> bits = np.array([[0x3F80, 0xC000]], np.uint16)          # bf16 1.0 and -2.0
    >>> save_safetensors("mask.safetensors", {"mask": np.array([True, False]), "vectors": (bits, "BF16")})
    >>> read_header("mask.safetensors").tensors["vectors"].dtype
    'BF16'
    """
    from blackholes.io.atomic import atomic_path

    entries, arrays, offset = {}, [], 0
    for name, value in tensors.items():
        array, dtype = value if isinstance(value, tuple) else (value, None)
        array = np.ascontiguousarray(array)
        if dtype is None:
            dtype = SAFETENSORS_DTYPES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
            if dtype is None:
                raise BlackholesError(f"cannot write numpy dtype {array.dtype} to safetensors ({name!r})")
        if STORAGE_DTYPES[dtype].itemsize != array.dtype.itemsize:
            raise BlackholesError(f"{name!r}: {array.dtype} arrays cannot hold {dtype} values")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        entries[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    if metadata:
        entries = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **entries}
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # align the data to 8 bytes, as safetensors does
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for array in arrays:
            f.write(memoryview(array.reshape(-1)).cast("B") if array.size else b"")
