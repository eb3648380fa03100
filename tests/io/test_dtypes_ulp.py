"""ULP arithmetic of io/dtypes: keys, distances, spacing, grids; checked against value order,
np.nextafter / np.spacing, and a sign-magnitude formula written independently here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import (
    FLOAT_FORMATS,
    ULP_NAN,
    grid_keys,
    grid_of,
    is_nan_key,
    key_bits,
    key_distance,
    key_range,
    to_float64,
    to_grid_bits,
    ulp_distance,
    ulp_key,
    ulp_spacing,
)

WIDTH = {"BF16": 16, "F16": 16, "F32": 32, "F64": 64, "F8_E4M3": 8, "F8_E5M2": 8}


def all_codes(dtype):
    return np.arange(1 << WIDTH[dtype], dtype=np.int64).astype(FLOAT_FORMATS[dtype][0])


def oracle_ulps(a: int, b: int, width: int) -> int:
    """Representable values from a to b: same sign -> magnitude difference; else through -0, +0."""
    sign = 1 << (width - 1)
    ma, mb = a & (sign - 1), b & (sign - 1)
    if (a & sign) == (b & sign):
        return abs(ma - mb)
    return ma + mb + 1


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F8_E4M3", "F8_E5M2"])
def test_keys_count_every_value_in_order(dtype):
    """Every non-NaN code, sorted by value (-0 just below +0), has keys low, low+1, ..., high."""
    codes = all_codes(dtype)
    values = to_float64(codes, dtype)
    ok = ~np.isnan(values)
    codes, values = codes[ok], values[ok]
    order = np.lexsort((~np.signbit(values), values))  # by value; -0.0 before +0.0
    keys = ulp_key(codes[order], dtype)
    low, high = key_range(dtype)
    assert keys.dtype == np.int64
    assert keys[0] == low and keys[-1] == high
    assert np.all(np.diff(keys) == 1)
    every = all_codes(dtype)
    assert np.array_equal(is_nan_key(ulp_key(every, dtype), dtype), np.isnan(to_float64(every, dtype)))


@pytest.mark.parametrize("dtype,np_dtype", [("F16", np.float16), ("F32", np.float32), ("F64", np.float64)])
def test_next_value_is_one_key_up(dtype, np_dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 4, 2000)).astype(np_dtype)
    # (not -0.0: nextafter(-0.0, inf) is +tiny, as floats take -0 == +0; our grid has +0 between)
    x = x[~((x == 0) & np.signbit(x))]  # small negatives that rounded to -0.0
    x = np.r_[x, np_dtype(0), np.finfo(np_dtype).tiny, np.finfo(np_dtype).max].astype(np_dtype)
    with np.errstate(over="ignore"):
        up = np.nextafter(x, np_dtype(np.inf))  # the largest value's next is inf
    assert np.all(ulp_key(up, dtype) - ulp_key(x, dtype) == 1)
    assert np.array_equal(ulp_distance(x, up, dtype), np.ones(len(x), np.int64))
    pos = x[(x > 0) & (x < np.finfo(np_dtype).max)]  # (numpy's spacing at the max is inf; ours its binade's)
    assert np.array_equal(ulp_spacing(pos, dtype), np.spacing(pos).astype(np.float64))


def test_signed_zeros_subnormals_and_infinities():
    z = np.float32([0.0, -0.0])
    assert ulp_key(z, "F32").tolist() == [0, -1]
    assert ulp_distance(z[:1], z[1:], "F32").tolist() == [1]
    tiny = np.float32(1e-45)
    assert ulp_distance(np.float32([-tiny]), np.float32([tiny]), "F32").tolist() == [3]  # -tiny, -0, +0, +tiny
    big = np.finfo(np.float32).max
    assert ulp_distance(np.float32([big]), np.float32([np.inf]), "F32").tolist() == [1]
    assert ulp_key(np.array([0x7F80, 0xFF80], np.uint16), "BF16").tolist() == list(key_range("BF16"))[::-1]


def test_nan_is_near_nothing():
    a = np.float32([np.nan, np.nan, 1.0])
    b = np.float32([np.nan, 1.0, -np.nan])
    assert ulp_distance(a, b, "F32").tolist() == [ULP_NAN] * 3


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2"]), st.data())
def test_distance_matches_sign_magnitude_formula(dtype, data):
    width = WIDTH[dtype]
    a, b = (data.draw(st.integers(0, (1 << width) - 1)) for _ in range(2))
    unsigned = FLOAT_FORMATS[dtype][0]
    x, y = np.array([a], unsigned), np.array([b], unsigned)
    assert key_bits(ulp_key(x, dtype), dtype).tolist() == [a]  # the inverse map
    native = ulp_key(x, dtype, native=True)
    assert native.dtype.itemsize == unsigned.itemsize and native.astype(np.int64).tolist() == ulp_key(x, dtype).tolist()
    got = int(ulp_distance(x, y, dtype)[0])
    if np.isnan(to_float64(x, dtype)[0]) or np.isnan(to_float64(y, dtype)[0]):
        assert got == ULP_NAN
    else:
        assert got == min(oracle_ulps(a, b, width), ULP_NAN - 1)
        assert got == int(ulp_distance(y, x, dtype)[0])


def test_f64_extremes_saturate_instead_of_overflowing():
    d = ulp_distance(np.float64([-np.inf]), np.float64([np.inf]), "F64")
    assert d.tolist() == [ULP_NAN - 1]
    assert key_distance(np.array([-(1 << 62)]), np.array([1 << 62])).tolist() == [ULP_NAN - 1]


def test_bf16_spacing_matches_the_next_code():
    codes = all_codes("BF16")[1:0x7F7F]  # positive, finite, below the largest
    values = to_float64(codes, "BF16")
    gap = to_float64(codes + 1, "BF16") - values
    assert np.array_equal(ulp_spacing(values, "BF16"), gap)
    assert ulp_spacing(np.array([0.0]), "BF16")[0] == 2.0**-133
    assert np.isnan(ulp_spacing(np.array([np.inf, np.nan]), "F32")).all()


def test_fp8_values_match_torch():
    torch = pytest.importorskip("torch")
    for dtype, tdt in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        codes = all_codes(dtype)
        want = torch.from_numpy(codes.view(np.int8).copy()).view(tdt).to(torch.float64).numpy()
        got = to_float64(codes, dtype)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])


# ---------------------------------------------------------------------------- grids


def bf16_valued(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    return (x.view(np.uint32) & 0xFFFF0000).view(np.float32)


def test_grid_of_finds_the_coarsest_grid():
    x = bf16_valued((50, 8))
    assert grid_of(x, "F32") == "BF16"
    assert grid_of(x.astype(np.float64), "F64") == "BF16"
    h = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float16)
    assert grid_of(h.astype(np.float32), "F32") == "F16"
    f = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    assert grid_of(f, "F32") == "F32"
    assert grid_of(f.astype(np.float64), "F64") == "F32"
    assert grid_of(np.random.default_rng(3).standard_normal((5, 3)), "F64") == "F64"
    assert grid_of(np.zeros((2, 2), np.uint16), "BF16") == "BF16"
    assert grid_of(np.zeros((2, 2), np.float16), "F16") == "F16"


def test_grid_of_reads_every_chunk_and_tolerates_nan_payloads():
    x = bf16_valued((400, 16))
    x.view(np.uint32)[3, 2] = 0x7FC00001  # a NaN with payload in the low half: still a NaN in bf16
    assert grid_of(x, "F32", chunk_bytes=64) == "BF16"
    x[-1, -1] = np.float32(0.1)  # one value off the grid, in the last chunk
    assert grid_of(x, "F32", chunk_bytes=64) == "F32"


def test_to_grid_bits_is_exact_or_refuses():
    x = bf16_valued((20, 4))
    bits = to_grid_bits(x, "F32", "BF16")
    assert np.array_equal(to_float64(bits, "BF16"), x.astype(np.float64))
    assert np.array_equal(grid_keys(x, "F32", "BF16"), ulp_key(bits, "BF16").astype(np.int32))
    assert grid_keys(x.astype(np.float64), "F64", "F64").dtype == np.int64
    nan = np.float32([np.nan])
    nan.view(np.uint32)[0] = 0x7F800001  # top half alone would read as +inf
    assert np.isnan(to_float64(to_grid_bits(nan, "F32", "BF16"), "BF16")[0])
    with pytest.raises(BlackholesError, match="not on the BF16 grid"):
        to_grid_bits(np.float32([0.1]), "F32", "BF16")
    with pytest.raises(BlackholesError, match="not on the F16 grid"):
        to_grid_bits(np.float32([1e-9]), "F32", "F16")
    with pytest.raises(BlackholesError):
        to_grid_bits(np.float16([1.0]), "F16", "BF16")


@pytest.mark.parametrize("dtype,words", [("I32", "integer"), ("BOOL", "integer"), ("U8", "integer"),
                                         ("Q8_0", "dequantize"), ("Q4_K", "dequantize"), ("X9", "dequantize")])
def test_no_grid_refused_in_one_line(dtype, words):
    with pytest.raises(BlackholesError, match=words) as e:
        grid_of(np.zeros((2, 2), np.uint8), dtype)
    assert "\n" not in str(e.value)
    with pytest.raises(BlackholesError):
        ulp_key(np.zeros(2, np.uint8), dtype)
