"""Every dtype table and bit view in one place: storage dtypes, widening, rounding.

bfloat16 (and the fp8 types) have no numpy dtype: their values are held as unsigned
integers of the same width, which is exactly what a bit-identity comparison wants;
:func:`to_float32` widens them when arithmetic is needed.

>>> to_float32(bf16_from_float32(np.array([1.0, 3.14159], np.float32)), "BF16").tolist()
[1.0, 3.140625]
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
    """Widen a tensor (as returned by :func:`~blackholes.io.safetensors.open_tensor`) to float32 for arithmetic.

    bf16 widening is exact (bf16 is the top half of a float32). Never use the
    result to decide identity: compare raw bits instead.

    >>> from blackholes.io.safetensors import open_tensor
    >>> to_float32(open_tensor("model.safetensors", "model.embed_tokens.weight")[5], "BF16").dtype
    dtype('float32')
    """
    if dtype == "BF16":
        wide = np.asarray(array, dtype=np.uint16).astype(np.uint32)
        wide <<= 16  # in place: one temporary the size of the float32 result, not two
        return wide.view(np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        raise BlackholesError(f"arithmetic on {dtype} tensors is not supported; compare bits instead")
    return np.asarray(array, dtype=np.float32)  # float32 in: no copy


def bf16_from_float32(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest-even), returned as raw ``uint16`` bits."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():
        out[nan] = (bits[nan] >> 16).astype(np.uint16) | 0x0040  # keep NaN a quiet NaN
    return out


# ---------------------------------------------------------------------------- ULP arithmetic
#
# Nearness is counted in ULPs on the grid the values live on, never as a float distance.
# Every float format here is sign-magnitude, so reading the magnitude bits as an integer
# already counts representable values upwards from +0; mirroring the negatives below
# zero (-0 -> -1, the smallest negative subnormal -> -2, ...) gives one integer *key* per
# value such that adjacent representable values differ by exactly 1, -0.0 and +0.0 are
# 1 apart, +inf sits 1 above the largest finite value, and the ULP distance of two values
# is the difference of their keys. NaNs get keys beyond the infinities; every function
# below treats them as "near nothing".

# name -> (unsigned bits dtype, significand bits incl. the implicit one, min normal exponent,
#          largest magnitude bit pattern that is not a NaN)
FLOAT_FORMATS: dict[str, tuple[np.dtype, int, int, int]] = {
    "BF16": (np.dtype("<u2"), 8, -126, 0x7F80),
    "F16": (np.dtype("<u2"), 11, -14, 0x7C00),
    "F32": (np.dtype("<u4"), 24, -126, 0x7F800000),
    "F64": (np.dtype("<u8"), 53, -1022, 0x7FF0000000000000),
    "F8_E4M3": (np.dtype("<u1"), 4, -6, 0x7E),  # e4m3fn: no infinities, 0x7F is NaN
    "F8_E5M2": (np.dtype("<u1"), 3, -14, 0x7C),
}

# The ULP distance reported when either value is a NaN: larger than any real distance,
# so that "distance <= k" is false for every k.
ULP_NAN = np.iinfo(np.int64).max

# Coarser grids an f32 / f64 matrix may live on, in the order they are preferred
# (bf16 first: a bf16 model saved as f32 is by far the most common case).
_FINER_STORAGE = {"F32": ("BF16", "F16"), "F64": ("BF16", "F16", "F32")}


def _float_format(dtype: str) -> tuple[np.dtype, int, int, int]:
    fmt = FLOAT_FORMATS.get(dtype)
    if fmt is None:
        raise BlackholesError(_no_grid_reason(dtype))
    return fmt


def _no_grid_reason(dtype: str) -> str:
    """One line saying why ``dtype`` has no ULP grid."""
    if dtype == "BOOL" or dtype in ("U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"):
        return f"ULPs are defined only for float values; {dtype} is an integer type (compare bits exactly instead)"
    if dtype not in STORAGE_DTYPES:
        return (f"{dtype} values have no ULP grid (a block-quantised or unknown type); "
                f"dequantize the matrix to F32 first")
    return f"{dtype} values have no ULP grid"


def check_float_dtype(dtype: str) -> str:
    """``dtype`` if it has a ULP grid, else a :class:`BlackholesError` saying why not.

    >>> check_float_dtype("BF16")
    'BF16'
    """
    _float_format(dtype)
    return dtype


def ulp_key(bits: np.ndarray, dtype: str, *, native: bool = False) -> np.ndarray:
    """An order-preserving int64 key per value: adjacent representable values differ by 1.

    ``bits``: the values as stored (numpy floats, or raw bits for BF16/F8), viewed as
    the format's bits. ``-0.0`` -> -1, ``+0.0`` -> 0; the map is a bijection of bit
    patterns, so equal keys mean identical bits. ``native=True``: the keys in the format's
    own width (int16 for bf16, ...), for large arrays; widen before subtracting.

    >>> ulp_key(np.array([-0.0, 0.0, 1.4e-45, 1.0], np.float32), "F32")
    array([        -1,          0,          1, 1065353216])
    >>> ulp_key(np.array([0x8000, 0x3F80], np.uint16), "BF16", native=True)
    array([   -1, 16256], dtype=int16)
    """
    key = _native_key(bits, dtype)
    return key if native else key.astype(np.int64)


def _native_key(bits: np.ndarray, dtype: str) -> np.ndarray:
    """:func:`ulp_key` in the format's own width (int16 for bf16, ...): sign-magnitude to
    two's complement by flipping the magnitude bits of the negatives."""
    unsigned = _float_format(dtype)[0]
    signed = np.asarray(bits).view(unsigned).view(np.dtype(f"i{unsigned.itemsize}"))
    magnitude = np.iinfo(signed.dtype).max
    return signed ^ ((signed >> (8 * unsigned.itemsize - 1)) & magnitude)


def key_bits(keys: np.ndarray, dtype: str) -> np.ndarray:
    """The bit patterns whose :func:`ulp_key` are ``keys`` (the inverse map).

    >>> key_bits(np.array([-1, 0, 16256]), "BF16")
    array([32768,     0, 16256], dtype=uint16)
    """
    unsigned = _float_format(dtype)[0]
    signed = np.asarray(keys).astype(np.dtype(f"i{unsigned.itemsize}"))
    magnitude = np.iinfo(signed.dtype).max
    return (signed ^ ((signed >> (8 * unsigned.itemsize - 1)) & magnitude)).view(unsigned)


def key_range(dtype: str) -> tuple[int, int]:
    """``(lowest, highest)`` key of a value that is not a NaN (-inf and +inf where they exist).

    >>> key_range("BF16")
    (-32641, 32640)
    """
    top = _float_format(dtype)[3]
    return -top - 1, top


def is_nan_key(keys: np.ndarray, dtype: str) -> np.ndarray:
    """True where a key belongs to a NaN.

    >>> is_nan_key(ulp_key(np.array([np.nan, np.inf, -np.nan], np.float32), "F32"), "F32")
    array([ True, False,  True])
    """
    low, high = key_range(dtype)
    keys = np.asarray(keys)
    return (keys > high) | (keys < low)


def key_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` of integer keys as int64, without overflow (saturating just below ``ULP_NAN``).

    Exact for every grid up to 32 bits; for F64 exact below 2**63 - 1 ULPs.

    >>> key_distance(np.array([-1, 5]), np.array([0, -5]))
    array([ 1, 10])
    """
    a, b = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    high, low = np.maximum(a, b), np.minimum(a, b)
    span = high.view(np.uint64) - low.view(np.uint64)  # mod 2**64: exact, as 0 <= high - low < 2**64
    return np.minimum(span, np.uint64(ULP_NAN - 1)).astype(np.int64)


def ulp_distance(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """ULPs between values ``a`` and ``b`` of one float format (elementwise, broadcasting).

    Counted on ``dtype``'s own grid: ``-0.0`` and ``+0.0`` are 1 apart; a NaN on either
    side gives :data:`ULP_NAN` (never near anything, not even another NaN).

    >>> ulp_distance(np.float32([1.0, -0.0, np.nan]), np.float32([1.0000002, 0.0, np.nan]), "F32")
    array([                  2,                   1, 9223372036854775807])
    """
    ka, kb = ulp_key(a, dtype), ulp_key(b, dtype)
    out = key_distance(ka, kb)
    return np.where(is_nan_key(ka, dtype) | is_nan_key(kb, dtype), ULP_NAN, out)


def ulp_spacing(x: np.ndarray, dtype: str) -> np.ndarray:
    """The grid's spacing at ``x`` (float64): the gap from ``|x|`` to the next larger value.

    As ``np.spacing`` for the numpy types, for bf16 and fp8 too; at zero (and among the
    subnormals) the subnormal spacing; at the largest finite value its binade's spacing
    (numpy says inf); NaN for inf and NaN.

    >>> ulp_spacing(np.array([1.0, 3.0, 0.0]), "BF16")
    array([7.81250000e-03, 1.56250000e-02, 9.18354962e-41])
    """
    _, digits, emin, _ = _float_format(dtype)
    x = np.abs(np.asarray(x, dtype=np.float64))
    _, e = np.frexp(x)  # x = m * 2**e with 0.5 <= m < 1, so floor(log2 x) = e - 1
    exponent = np.maximum(e - 1, emin)
    with np.errstate(invalid="ignore"):
        out = np.ldexp(1.0, exponent - (digits - 1))
    return np.where(np.isfinite(x), np.where(x == 0, np.ldexp(1.0, emin - digits + 1), out), np.nan)


def to_float64(array: np.ndarray, dtype: str) -> np.ndarray:
    """Values of any float format as float64 (exact for every format here).

    ``array``: the values as stored, or their raw bits as unsigned integers.

    >>> to_float64(np.array([0x3F80, 0x8000], np.uint16), "BF16")
    array([ 1., -0.])
    """
    _float_format(dtype)
    array = np.asarray(array)
    if array.dtype.kind == "u" and dtype in ("F16", "F32", "F64"):
        array = array.view(STORAGE_DTYPES[dtype])
    if dtype == "BF16":
        with np.errstate(invalid="ignore"):  # signalling NaNs widen to quiet NaNs, silently
            return to_float32(array, "BF16").astype(np.float64)
    if dtype.startswith("F8"):
        return _fp8_table(dtype)[array.view(np.uint8)]
    return array.astype(np.float64)


def _fp8_table(dtype: str) -> np.ndarray:
    """float64 value of each of the 256 codes of an fp8 format."""
    _, digits, emin, top = FLOAT_FORMATS[dtype]
    mant_bits = digits - 1
    code = np.arange(256)
    mag = code & 0x7F
    exp, mant = mag >> mant_bits, mag & ((1 << mant_bits) - 1)
    bias = 1 - emin
    normal = np.ldexp(1.0 + mant / (1 << mant_bits), exp - bias)
    value = np.where(exp == 0, np.ldexp(mant / (1 << mant_bits), emin), normal)
    if dtype == "F8_E5M2":
        value = np.where(mag == top, np.inf, value)
    value = np.where(mag > top, np.nan, value)
    return np.where(code & 0x80, -value, value)


def _on_grid(values: np.ndarray, dtype: str, grid: str) -> bool:
    """Whether every value of a (storage ``dtype``) block is exactly representable on ``grid``."""
    if dtype == "F32" and grid == "BF16" and values.flags.c_contiguous and values.nbytes % 8 == 0:
        # one OR over the block: no low half set anywhere means every value is a bf16 value
        low = np.bitwise_or.reduce(values.reshape(-1).view(np.uint64)) & np.uint64(0x0000FFFF0000FFFF)
        if not low:
            return True
    try:
        to_grid_bits(values, dtype, grid)
    except BlackholesError:
        return False
    return True


def to_grid_bits(values: np.ndarray, dtype: str, grid: str) -> np.ndarray:
    """The bits of stored values re-expressed on a coarser ``grid`` (exactly, or an error).

    ``dtype`` is the storage dtype; ``grid`` one :func:`grid_of` may answer. NaNs stay NaNs.

    >>> to_grid_bits(np.float32([1.0, -0.0]), "F32", "BF16")
    array([16256, 32768], dtype=uint16)
    """
    _float_format(dtype), _float_format(grid)
    values = np.asarray(values)
    if grid == dtype:
        return values.view(FLOAT_FORMATS[dtype][0])
    if dtype == "F32" and grid == "BF16":
        b = values.view(np.uint32)
        low = (b & 0xFFFF) != 0
        out = (b >> 16).astype(np.uint16)
        if low.any():
            nan = np.isnan(values)
            if (low & ~nan).any():
                raise BlackholesError("some F32 values are not on the BF16 grid")
            out[nan] |= 0x0040  # a NaN whose payload sat in the low half stays a NaN
        return out
    if dtype == "F64" and grid == "BF16":
        return to_grid_bits(to_grid_bits(values, "F64", "F32").view(np.float32), "F32", "BF16")
    if dtype in ("F32", "F64") and grid in ("F16", "F32") and grid != dtype:
        narrow = np.float16 if grid == "F16" else np.float32
        with np.errstate(over="ignore", invalid="ignore"):
            out = values.astype(narrow)
            exact = (out.astype(values.dtype) == values) | np.isnan(values)
        if not exact.all():
            raise BlackholesError(f"some {dtype} values are not on the {grid} grid")
        return out.view(FLOAT_FORMATS[grid][0])
    raise BlackholesError(f"{dtype} values cannot be counted on the {grid} grid")


def grid_keys(values: np.ndarray, dtype: str, grid: str) -> np.ndarray:
    """:func:`ulp_key` on ``grid`` of stored values: int32 for grids up to 32 bits, int64 for F64.

    >>> grid_keys(np.float32([1.0, 1.0078125]), "F32", "BF16")
    array([16256, 16257], dtype=int32)
    """
    key = _native_key(to_grid_bits(values, dtype, grid), grid)
    return key.astype(np.int64 if key.dtype.itemsize == 8 else np.int32)


def grid_of(array: np.ndarray, dtype: str, *, chunk_bytes: int = 8 << 20) -> str:
    """The grid a matrix's values live on, for counting ULPs.

    The storage dtype, except for F32 (F64) matrices whose every value is representable
    in BF16 (then "BF16"), else in F16, (else, for F64, in F32). Reads the matrix in
    chunks and stops at the first chunk that rules out every coarser grid, so a true
    f32 matrix costs one chunk. Integer and quantised dtypes raise :class:`BlackholesError`.

    >>> grid_of(np.float32([[1.0, 0.5], [-0.0, 3.0]]), "F32")
    'BF16'
    >>> grid_of(np.float32([[1.0, 0.1]]), "F32")
    'F32'
    """
    _float_format(dtype)
    left = list(_FINER_STORAGE.get(dtype, ()))
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if not left or array.size == 0:
        return dtype
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, chunk_bytes // max(1, rows[0].nbytes))
    for lo in range(0, rows.shape[0], step):
        block = np.asarray(rows[lo : lo + step])
        left = [g for g in left if _on_grid(block, dtype, g)]
        if not left:
            return dtype
    return left[0]
