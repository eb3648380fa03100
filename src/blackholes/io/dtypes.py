"""Every dtype table and bit view in one place: storage dtypes, widening, rounding.

bfloat16 (and the fp8 types) have no numpy dtype: their values are held as unsigned
integers of the same width, which is exactly what a bit-identity comparison wants;
:func:`to_float32` widens them when arithmetic is needed.

>>> to_float32(bf16_from_float32(np.array([1.0, 3.14159], np.float32)), "BF16")
array([1.       , 3.140625], dtype=float32)
"""

from __future__ import annotations

import numpy as np

from blackholes.errors import BlackholesError

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


# numpy/torch dtype names that are not safetensors names
NAMED_DTYPES = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}

# the unsigned integer that holds one value's bits, for the float dtypes
BITS = {"BF16": np.dtype("<u2"), "F16": np.dtype("<u2"), "F32": np.dtype("<u4"), "F64": np.dtype("<u8")}


def bits(array: np.ndarray, dtype: str) -> np.ndarray:
    """The raw bits of a float tensor as unsigned integers (a view, no copy).

    >>> bits(np.array([1.0], np.float32), "F32")
    array([1065353216], dtype=uint32)
    """
    return np.asarray(array).view(BITS[dtype])


def dtype_name(array: np.ndarray) -> str:
    """The safetensors name of a numpy array's dtype.

    >>> dtype_name(np.zeros(2, np.float16))
    'F16'
    """
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    name = SAFETENSORS_DTYPES.get(dt)
    if name is None:
        raise BlackholesError(f"numpy dtype {array.dtype} has no safetensors name")
    return name


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
