"""GGUF files (llama.cpp's format, also Ollama's blobs) as sources: one memory-mapped matrix.

The header and tensor directory are walked here, bounds-checked at every read, with
the ``gguf`` package's own tables of tensor types and block sizes; its dequantizers
give values when an analysis asks for them. ``gguf.GGUFReader`` is not used to open
files: it builds numpy views of every metadata string, which takes seconds for a
150k-token vocabulary and its merges (1 s for 20k tokens here), and corrupt input
reaches the caller as assorted numpy errors. The tests check this reader against it.

Rows are compared as stored: F32 / F16 as numpy values, BF16 as ``uint16`` bits, a
block-quantised row (Q8_0, Q4_K, IQ4_XS, ...) as its run of blocks, ``uint8`` bytes.
GGUF lists dimensions fastest first: ``token_embd.weight`` has ``ne = [n_embd, n_vocab]``,
so ``ne[0]`` is the row width.

>>> m = load_gguf("qwen3-4b-q8_0.gguf")                     # doctest: +SKIP
>>> m.key, m.dtype, m.shape, m.tied                         # doctest: +SKIP
('token_embd.weight', 'Q8_0', (151936, 2560), True)
"""

from __future__ import annotations

import functools
import math
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.sources.gguf_vocab import StringArray, gguf_vocabulary
from blackholes.sources.matrix import Matrix, row_chunks
from blackholes.sources.names import short_list

INPUT_NAME = "token_embd.weight"
OUTPUT_NAME = "output.weight"
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 (32-bit counts) predates every model in circulation
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays of ...: llama.cpp writes none deeper than 2

# GGUF metadata value types (gguf.GGUFValueType): id -> struct format, numpy dtype; 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}

# tensor types stored as plain numbers: GGML name -> (numpy storage dtype, Matrix.dtype)
PLAIN_TYPES = {
    "F32": ("<f4", "F32"),
    "F16": ("<f2", "F16"),
    "BF16": ("<u2", "BF16"),  # no numpy bfloat16: raw bits, as for safetensors
    "F64": ("<f8", "F64"),
    "I8": ("<i1", "I8"),
    "I16": ("<i2", "I16"),
    "I32": ("<i4", "I32"),
    "I64": ("<i8", "I64"),
}


# ---------------------------------------------------------------------------- header


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of a GGUF tensor directory (``ne`` fastest dimension first)."""

    name: str
    type_id: int
    type_name: str | None  # None: a type this version of gguf does not know
    ne: tuple[int, ...]
    offset: int  # absolute, in the file
    nbytes: int | None

    @property
    def rows_width(self) -> tuple[int, int] | None:
        """(rows, values per row) of a 2-D tensor (trailing 1-sized dimensions allowed)."""
        ne = list(self.ne)
        while len(ne) > 2 and ne[-1] == 1:
            ne.pop()
        return (ne[1], ne[0]) if len(ne) == 2 else None


@dataclass
class GGUFHeader:
    """The metadata and tensor directory of one GGUF file; no tensor data is read.

    Metadata values: numbers and strings as Python values, numeric arrays as numpy
    arrays, string arrays as :class:`StringArray` (decoded on access).
    """

    path: Path
    version: int
    alignment: int
    data_offset: int
    size: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)


class _Corrupt(Exception):
    """Raised inside the walk; reworded with the file's name by :func:`read_gguf_header`."""


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf, pos: int = 0):
        self.buf, self.pos, self.end = buf, pos, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise _Corrupt(f"{what} runs past the end of the file at byte {self.pos:,} (truncated?)")

    def scalar(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def raw_string(self, what: str) -> bytes:
        n = self.scalar("Q", what)
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def string(self, what: str) -> str:
        return self.raw_string(what).decode("utf-8", "replace")

    def count(self, what: str, min_size: int) -> int:
        """A count of items at least ``min_size`` bytes each: refused if they cannot fit."""
        n = self.scalar("Q", what)
        if n * min_size > self.end - self.pos:
            raise _Corrupt(f"{what} is {n:,}, more than the {self.end - self.pos:,} bytes left can hold")
        return n


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read and check a GGUF file's header and tensor directory (memory-mapped, no tensor data).

    >>> h = read_gguf_header("model.gguf")                    # doctest: +SKIP
    >>> h.tensors["token_embd.weight"].ne                     # doctest: +SKIP
    (2560, 151936)
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise _Corrupt(f"only {size} bytes: too short for a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _walk(path, buf, size)
    except _Corrupt as e:
        raise BlackholesError(f"not a readable GGUF file: {path}: {e}") from None
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None


def _walk(path: Path, buf, size: int) -> GGUFHeader:
    if buf[:4] != MAGIC:
        raise _Corrupt(f"bad magic {bytes(buf[:4])!r} (a GGUF file starts with b'GGUF')")
    cur = _Cursor(buf, 4)
    version = cur.scalar("I", "version")
    if version & 0xFFFF == 0 and version >> 16:
        raise _Corrupt("big-endian GGUF files are not supported")
    if version not in VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported (only versions {', '.join(map(str, VERSIONS))})")
    n_tensors = cur.count("tensor count", 24)  # name length, n_dims, type, offset: 24 bytes at least
    n_kv = cur.count("metadata count", 13)
    metadata = _read_metadata(cur, n_kv)
    alignment = _alignment(metadata)
    infos = [_tensor_info(cur) for _ in range(n_tensors)]
    data_offset = -(-cur.pos // alignment) * alignment
    header = GGUFHeader(path, version, alignment, data_offset, size, metadata)
    for name, ne, type_id, rel in infos:
        if name in header.tensors:
            raise _Corrupt(f"tensor {name!r} is listed twice")
        header.tensors[name] = _tensor(name, ne, type_id, data_offset + rel, size)
    return header


def _read_metadata(cur: _Cursor, n_kv: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if key in metadata:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        metadata[key] = _value(cur, cur.scalar("I", f"type of {key!r}"), key)
    return metadata


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0):
    if vtype in _SCALARS:
        return cur.scalar(_SCALARS[vtype], f"value of {key!r}")
    if vtype == _STRING:
        return cur.string(f"value of {key!r}")
    if vtype != _ARRAY:
        raise _Corrupt(f"unknown metadata value type {vtype} for {key!r}")
    itype = cur.scalar("I", f"element type of {key!r}")
    if itype in _SCALARS:
        return _numeric_array(cur, itype, key)
    if itype == _STRING:
        return _string_array(cur, key)
    if itype == _ARRAY:  # arrays of arrays: the recursion is bounded by MAX_NESTING
        if depth >= MAX_NESTING:
            raise _Corrupt(f"metadata {key!r} nests arrays more than {MAX_NESTING} deep")
        return [_value(cur, _ARRAY, key, depth + 1) for _ in range(cur.count(f"length of {key!r}", 12))]
    raise _Corrupt(f"unknown metadata element type {itype} for {key!r}")


def _numeric_array(cur: _Cursor, itype: int, key: str) -> np.ndarray:
    dtype = np.dtype(_NUMPY[itype])
    n = cur.count(f"length of {key!r}", dtype.itemsize)
    out = np.frombuffer(cur.buf, dtype, n, cur.pos).copy()  # a copy: the map closes after the walk
    cur.pos += n * dtype.itemsize
    return out


def _string_array(cur: _Cursor, key: str) -> StringArray:
    """Walk ``n`` strings (8-byte length, bytes): keep one copy of their bytes and where each starts.

    This loop is most of a header's cost (~0.1 us a string: 30 ms for a 150k vocabulary
    and its merges); vectorised searches for the length fields were tried and were no
    faster, as they touch every byte several times.
    """
    n = cur.count(f"length of {key!r}", 8)
    buf, start, pos, starts = cur.buf, cur.pos, cur.pos, []
    unpack, keep = struct.Struct("<Q").unpack_from, starts.append
    try:
        for _ in range(n):
            keep(pos)
            pos += 8 + unpack(buf, pos)[0]
    except (struct.error, OverflowError):  # a length field past the end of the file (or past any file)
        pos = cur.end + 1
    if pos > cur.end:
        raise _Corrupt(f"the strings of {key!r} run past the end of the file (truncated?)")
    cur.pos = pos
    return StringArray(buf[start:pos], starts, base=start)


def _alignment(metadata: dict) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value & (value - 1):
        raise _Corrupt(f"general.alignment is {value!r}, not a power of two")
    return value


def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string("tensor name")
    n_dims = cur.scalar("I", f"dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    fmt = f"<{n_dims}QIQ"  # shape, type, offset in one read: a model has hundreds of tensors
    cur.need(struct.calcsize(fmt), f"directory entry of {name!r}")
    *ne, type_id, offset = struct.unpack_from(fmt, cur.buf, cur.pos)
    cur.pos += struct.calcsize(fmt)
    return name, tuple(ne), type_id, offset


def _tensor(name: str, ne: tuple[int, ...], type_id: int, offset: int, size: int) -> GGUFTensor:
    """A directory entry, checked to lie inside the file (when its type is known)."""
    type_name, nbytes = ggml_type(type_id), None
    if type_name is not None:
        block, type_size = ggml_block(type_name)
        nbytes = -(-math.prod(ne) // block) * type_size
        if offset + nbytes > size:
            raise _Corrupt(
                f"tensor {name!r} ({nbytes:,} bytes at byte {offset:,}) lies past the end of the file "
                f"({size:,} bytes): truncated or corrupt"
            )
    return GGUFTensor(name, type_id, type_name, ne, offset, nbytes)


@functools.lru_cache(maxsize=None)
def ggml_type(type_id: int) -> str | None:
    """The GGML tensor type's name (``8`` -> ``"Q8_0"``), None when gguf does not know it.

    >>> ggml_type(8), ggml_type(30), ggml_type(4)
    ('Q8_0', 'BF16', None)
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        t = GGMLQuantizationType(type_id)
    except ValueError:
        return None
    return t.name if t in GGML_QUANT_SIZES else None


def ggml_block(type_name: str) -> tuple[int, int]:
    """(values per block, bytes per block) of a GGML type: ``"Q8_0"`` -> ``(32, 34)``.

    >>> ggml_block("Q8_0"), ggml_block("F32")
    ((32, 34), (1, 4))
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


# ---------------------------------------------------------------------------- split models


@dataclass
class GGUFModel:
    """A GGUF model: one file, or the shards of a split one, each shard's header read once."""

    shards: list[Path]
    headers: list[GGUFHeader | None]
    _where: dict[str, int] | None = None  # tensor name -> the shard holding it

    @property
    def first(self) -> GGUFHeader:
        return self.header(0)

    def header(self, i: int) -> GGUFHeader:
        if self.headers[i] is None:
            self.headers[i] = _checked_shard(read_gguf_header(self.shards[i]), i, len(self.shards))
        return self.headers[i]

    def find(self, name: str) -> GGUFHeader | None:
        """The header of the shard holding tensor ``name`` (None if none does)."""
        i = self._index().get(name)
        return None if i is None else self.header(i)

    def names(self) -> list[str]:
        return list(self._index())

    def _index(self) -> dict[str, int]:
        """Where each tensor lies, every shard's directory read; a tensor in two shards is refused,
        as within one file (which copy would be scanned would depend on the order of reading)."""
        if self._where is None:
            where: dict[str, int] = {}
            for i in range(len(self.shards)):
                for name in self.header(i).tensors:
                    if name in where:
                        raise BlackholesError(
                            f"split GGUF {self.shards[i].name}: tensor {name!r} is in two parts "
                            f"({self.shards[where[name]].name} and {self.shards[i].name}); which one is meant?"
                        )
                    where[name] = i
            self._where = where
        return self._where


def open_gguf_model(path: str | Path) -> GGUFModel:
    """A GGUF file, or any shard of a split model (``name-00002-of-00003.gguf``): the whole model.

    The part number and count in the name must fit (1 <= part <= count), every part must be
    there, and the named file's own ``split.*`` metadata must agree with its name.

    >>> open_gguf_model("qwen-00002-of-00003.gguf").shards[0].name   # doctest: +SKIP
    'qwen-00001-of-00003.gguf'
    """
    path = Path(path)
    if not path.is_file():
        raise BlackholesError(f"no such file: {path}")
    split = SPLIT_NAME.match(path.name)
    if split is None:
        model = GGUFModel([path], [None])
        model.header(0)  # a part of a split model under another name is refused here
        return model
    no, count = int(split["no"]), int(split["count"])
    if not 1 <= no <= count:
        raise BlackholesError(f"split GGUF {path.name}: part {no} of {count} cannot be (parts are numbered "
                              f"1 to the count); rename it as its metadata says")
    shards = [path.with_name(f"{split['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5:,} more" if len(missing) > 5 else ""
        raise BlackholesError(
            f"split GGUF {path.name}: missing part(s) {', '.join(missing[:5])}{more} in {path.parent}")
    model = GGUFModel(shards, [None] * count)
    model.header(no - 1)  # the file named is checked first: its metadata must agree with its name
    return model


def _split_count(header: GGUFHeader) -> int:
    count = header.metadata.get("split.count", 1)
    if not isinstance(count, int) or count < 1:
        raise BlackholesError(f"corrupt GGUF metadata in {header.path}: split.count is {count!r}")
    return count


def _checked_shard(header: GGUFHeader, i: int, count: int) -> GGUFHeader:
    """A shard's own split.* metadata must agree with its place in the file names."""
    if count == 1:
        parts = _split_count(header)
        if parts > 1:
            raise BlackholesError(
                f"{header.path} is one part of a {parts}-file split GGUF, but its name does not end in "
                f"-NNNNN-of-{parts:05d}.gguf, so the other parts cannot be found"
            )
        return header
    found = (header.metadata.get("split.no"), header.metadata.get("split.count"))
    if found != (i, count) or any(isinstance(v, bool) for v in found):
        raise BlackholesError(
            f"{header.path.name} is named part {i + 1} of {count}, but its metadata says split.no={found[0]!r}, "
            f"split.count={found[1]!r}"
        )
    return header


# ---------------------------------------------------------------------------- choosing the matrix


def gguf_matrices(path: str | Path) -> dict:
    """Which tensors are the input and output matrices, and whether they are tied.

    ``output`` is ``output.weight``, or ``token_embd.weight`` when the model has no
    separate output matrix (tied); ``None`` where there is no such tensor.

    >>> gguf_matrices("smollm2-135m.gguf")                   # doctest: +SKIP
    {'input': 'token_embd.weight', 'output': 'token_embd.weight', 'tied': True}
    """
    return _matrices(open_gguf_model(path))


def _matrices(model: GGUFModel) -> dict:
    has_input = model.find(INPUT_NAME) is not None
    has_output = model.find(OUTPUT_NAME) is not None
    inp = INPUT_NAME if has_input else None
    return {"input": inp, "output": OUTPUT_NAME if has_output else inp, "tied": has_input and not has_output}


def _pick(model: GGUFModel, key: str | None, matrix: str | None) -> tuple[str, str]:
    """(tensor name, why it was picked)."""
    if key is not None:
        return key, "--key"
    found = _matrices(model)
    if matrix == "input":
        if found["input"] is None:
            raise _no_tensor(model, f"no input embedding ({INPUT_NAME}) in {model.shards[0]}; pick one with --key")
        return found["input"], "input embedding"
    if found["output"] is None:
        raise _no_tensor(model, f"no {OUTPUT_NAME} or {INPUT_NAME} in {model.shards[0]}; pick one with --key")
    if found["tied"]:
        return found["output"], f"output matrix = input embedding (no {OUTPUT_NAME}: tied)"
    if found["input"] is not None:
        _check_rows(model.find(OUTPUT_NAME).tensors[OUTPUT_NAME], model.find(INPUT_NAME).tensors[INPUT_NAME])
    return found["output"], "output matrix"


def _check_rows(output: GGUFTensor, embedding: GGUFTensor) -> None:
    """An output matrix has one row per token, like the input embedding: refuse one that does not."""
    rows_out, rows_in = (t.ne[1] if len(t.ne) > 1 else None for t in (output, embedding))
    if rows_out != rows_in:
        raise BlackholesError(
            f"{OUTPUT_NAME} (GGUF shape {list(output.ne)}) does not have {INPUT_NAME}'s {rows_in} rows "
            f"(shape {list(embedding.ne)}), so it is not taken as the output matrix; pick one with --key"
        )


def _no_tensor(model: GGUFModel, message: str) -> BlackholesError:
    return BlackholesError(f"{message} (tensors: {short_list(model.names())})")


# ---------------------------------------------------------------------------- loading


def load_gguf(path: str | Path, key: str | None = None, matrix: str | None = None) -> Matrix:
    """Memory-map one embedding matrix of a GGUF model (a file, or any shard of a split one).

    ``key`` names the tensor; otherwise ``matrix`` "input" is ``token_embd.weight`` and
    "output" (the default) is ``output.weight``, or ``token_embd.weight`` when the model
    ties them. Only that tensor's bytes are mapped; nothing is dequantised here.

    >>> m = load_gguf("qwen3-4b-q8_0.gguf", matrix="input")   # doctest: +SKIP
    >>> m.array.dtype, m.array.shape, m.width, m.quantization  # doctest: +SKIP
    (dtype('uint8'), (151936, 2720), 2560, 'Q8_0')
    """
    if matrix not in (None, "input", "output"):
        raise BlackholesError(f"matrix must be 'input' or 'output', not {matrix!r}")
    model = open_gguf_model(path)
    name, note = _pick(model, key, matrix)
    header = model.find(name)
    if header is None:
        raise _no_tensor(model, f"tensor {name!r} not found in {model.shards[0]}")
    tensor = header.tensors[name]
    array, dtype, width = map_gguf_tensor(header, tensor)
    quantized = tensor.type_name not in PLAIN_TYPES
    return Matrix(
        array=array,
        dtype=dtype,
        source=str(path),
        path=header.path,
        key=name,
        matrix=matrix or ("output" if key is None else None),
        note=note,
        format="gguf",
        quantization=tensor.type_name if quantized else None,
        width=width if quantized else None,
        vocabulary=gguf_vocabulary(model.first.metadata, str(model.shards[0])),
        tied=_matrices(model)["tied"],
        dequantize=dequantizer(tensor.type_name, width) if quantized else None,
        inputs=tuple(model.shards),  # every part is read (its header at least): none may be overwritten
    )


def map_gguf_tensor(header: GGUFHeader, tensor: GGUFTensor) -> tuple[np.ndarray, str, int]:
    """(read-only memmap of the stored rows, dtype name, values per row) of a 2-D tensor."""
    where = f"tensor {tensor.name!r} in {header.path}"
    if tensor.type_name is None:
        raise BlackholesError(f"{where} has tensor type {tensor.type_id}, which gguf does not know (update gguf?)")
    shape = tensor.rows_width
    if shape is None:
        raise BlackholesError(f"{where} has shape {list(tensor.ne)} (GGUF order); expected a 2-D matrix")
    rows, width = shape
    if rows == 0 or width == 0:
        raise BlackholesError(f"{where} is empty (shape {list(tensor.ne)})")
    if tensor.type_name in PLAIN_TYPES:
        storage, dtype = PLAIN_TYPES[tensor.type_name]
        units = width
    else:
        block, type_size = ggml_block(tensor.type_name)
        if width % block:
            raise BlackholesError(
                f"{where}: rows of {width:,} values are not a whole number of {tensor.type_name} blocks of {block}"
            )
        storage, dtype, units = "<u1", tensor.type_name, width // block * type_size
    array = np.memmap(header.path, dtype=storage, mode="r", offset=tensor.offset, shape=(rows, units))
    return array, dtype, width


def dequantizer(type_name: str, width: int):
    """rows (uint8 ``[n, row_bytes]``) -> float32 ``[n, width]``, with gguf's own code, ~4 MiB at a time.

    >>> import gguf.quants
    >>> q = gguf.quants.quantize(np.full((2, 32), -127.0, np.float32), gguf.GGMLQuantizationType.Q8_0)
    >>> q.shape, dequantizer("Q8_0", 32)(q)[:, :3]
    ((2, 34), array([[-127., -127., -127.],
           [-127., -127., -127.]], dtype=float32))
    """

    def dequantize(rows: np.ndarray) -> np.ndarray:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize as gguf_dequantize

        rows = np.asarray(rows, dtype=np.uint8)
        out = np.empty((rows.shape[0], width), np.float32)
        for lo, hi in row_chunks(rows.shape[0], rows.shape[1], 4 << 20):
            try:
                out[lo:hi] = gguf_dequantize(np.ascontiguousarray(rows[lo:hi]), GGMLQuantizationType[type_name])
            except NotImplementedError:
                raise BlackholesError(
                    f"gguf cannot dequantize {type_name} rows; their identity can be scanned, but not their values"
                ) from None
        return out

    return dequantize
