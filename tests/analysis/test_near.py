"""near_clusters and anatomy: planted clusters with known ULP offsets, the K / K+1 boundary,
signed zeros, NaNs, every internal path forced, and a brute-force all-pairs reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import blackholes.analysis.near as near
import blackholes.analysis.near_search as near_search
from blackholes.analysis.exact import find_groups
from blackholes.analysis.near import anatomy, near_clusters
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import ULP_NAN

WIDTH = {"BF16": 16, "F16": 16, "F32": 32}
UNSIGNED = {16: np.uint16, 32: np.uint32}


# ---------------------------------------------------------------------------- brute force, written independently


def oracle_keys(bits: np.ndarray, width: int) -> np.ndarray:
    """Sign-magnitude bits -> value counts: magnitude for +, -(magnitude) - 1 for - (so -0 -> -1)."""
    b = bits.astype(np.int64)
    sign = 1 << (width - 1)
    return np.where(b & sign, -(b & (sign - 1)) - 1, b)


def oracle_nan(bits: np.ndarray, dtype: str) -> np.ndarray:
    top = {"BF16": 0x7F80, "F16": 0x7C00, "F32": 0x7F800000}[dtype]
    return (bits.astype(np.int64) & ((1 << (WIDTH[dtype] - 1)) - 1)) > top


def oracle_clusters(bits: np.ndarray, dtype: str, k: int) -> list[list[int]]:
    """All pairs: identical rows, or within k ULPs everywhere with no NaN; components of 2+ rows."""
    keys, nan = oracle_keys(bits, WIDTH[dtype]), oracle_nan(bits, dtype).any(axis=1)
    n = len(bits)
    parent = list(range(n))

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for i in range(n):
        same = (bits[i + 1 :] == bits[i]).all(axis=1)
        close = (np.abs(keys[i + 1 :] - keys[i]) <= k).all(axis=1) & ~nan[i + 1 :] & ~nan[i]
        for j in np.flatnonzero(same | close) + i + 1:
            parent[root(int(j))] = root(i)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(root(i), []).append(i)
    return sorted(c for c in comps.values() if len(c) > 1)


def from_keys(keys: np.ndarray, width: int) -> np.ndarray:
    sign = 1 << (width - 1)
    return np.where(keys < 0, (-keys - 1) | sign, keys).astype(UNSIGNED[width])


def as_storage(bits: np.ndarray, dtype: str) -> np.ndarray:
    return bits.view(np.float16) if dtype == "F16" else bits.view(np.float32) if dtype == "F32" else bits


def found(x, dtype, k, **kw) -> list[list[int]]:
    return sorted(c.rows for c in near_clusters(x, dtype, k, **kw).clusters)


def planted_keys(rng, n, d, k, spread, width):
    """Random keys with copies moved by up to k+1 ULPs per coordinate (near, far and boundary pairs)."""
    keys = rng.integers(-spread, spread, size=(n, d))
    for _ in range(n // 2):
        a, b = rng.integers(0, n, 2)
        keys[b] = keys[a] + rng.integers(-k - 1, k + 2, d)
    limit = (1 << (width - 1)) - (1 << (width - 6))  # stay clear of inf/NaN codes
    return np.clip(keys, -limit, limit)


# ---------------------------------------------------------------------------- against brute force


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["BF16", "F16", "F32"]), st.integers(0, 2**32 - 1), st.integers(0, 10),
       st.sampled_from([3, 40, 5000]))
def test_matches_all_pairs_brute_force(dtype, seed, k, spread):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 70)), int(rng.integers(1, 9))
    width = WIDTH[dtype]
    bits = from_keys(planted_keys(rng, n, d, k, spread, width), width)
    if rng.random() < 0.3:  # a NaN somewhere
        bits[rng.integers(n), rng.integers(d)] = {"BF16": 0x7FC1, "F16": 0x7E01, "F32": 0x7FC00001}[dtype]
    x = as_storage(bits, dtype)
    assert found(x, dtype, k, grid=dtype) == oracle_clusters(bits, dtype, k)


@pytest.mark.parametrize("leaf,probes,depth,sample,copies", [(2, 1, 4, 1024, 8), (2, 1, 0, 1024, 8),
                                                              (3, 2, 1, 4, 8), (2, 3, 2, 2, 8), (2, 4, 3, 1024, 1)])
def test_every_internal_path_is_exact(monkeypatch, leaf, probes, depth, sample, copies):
    """Tiny leaves, one probe, no or shallow re-probing, tiny samples, no room for grid copies:
    still the brute-force answer."""
    monkeypatch.setattr(near_search, "ENTRY_FACTOR", copies)
    monkeypatch.setattr(near_search, "LEAF_ROWS", leaf)
    monkeypatch.setattr(near_search, "PROBES", probes)
    monkeypatch.setattr(near_search, "MAX_DEPTH", depth)
    monkeypatch.setattr(near_search, "SAMPLE_ROWS", sample)
    monkeypatch.setattr(near_search, "DENSE_ROWS", 2)
    rng = np.random.default_rng(leaf * 1000 + probes * 100 + depth * 10 + copies)
    for _ in range(25):
        n, d, k = int(rng.integers(2, 45)), int(rng.integers(1, 7)), int(rng.integers(0, 5))
        bits = from_keys(planted_keys(rng, n, d, k, int(rng.choice([3, 10, 300])), 16), 16)
        assert found(bits, "BF16", k) == oracle_clusters(bits, "BF16", k)


def test_no_grid_cuts_at_all_is_still_exact(monkeypatch):
    """With the shifted grids never paying, only the free cuts at jumps > k split: same answer."""
    monkeypatch.setattr(near_search, "PAY", -1.0)
    monkeypatch.setattr(near_search, "LEAF_ROWS", 2)
    rng = np.random.default_rng(11)
    for _ in range(30):
        n, d, k = int(rng.integers(2, 50)), int(rng.integers(1, 6)), int(rng.integers(0, 6))
        bits = from_keys(planted_keys(rng, n, d, k, int(rng.choice([5, 50, 3000])), 16), 16)
        r = near_clusters(bits, "BF16", k)
        assert sorted(c.rows for c in r.clusters) == oracle_clusters(bits, "BF16", k)
        assert r.stats["probe_grids"] == 0


def test_f64_across_its_whole_range():
    """Keys spanning nearly 2**64 (both signs, every exponent): the wide-range sorts."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((150, 3)) * 10.0 ** rng.integers(-300, 300, (150, 3))
    x[1] = x[0]
    x[1, 2] = ulps_up(x[0, 2], 2)
    x[2] = x[1]
    x[2, 0] = ulps_up(x[1, 0], 3)
    x[[3, 4]] = x[3]
    bits = x.view(np.uint64)
    sign = np.uint64(1 << 63)
    keys = np.where(bits & sign, -(bits & ~sign).astype(object) - 1, bits.astype(object))  # exact Python ints
    far = lambda a, b: max(abs(int(p) - int(q)) for p, q in zip(keys[a], keys[b]))
    assert far(0, 2) == 3 and far(0, 1) == 2
    assert found(x, "F64", 3) == [[0, 1, 2], [3, 4]]
    assert found(x, "F64", 2) == [[0, 1], [3, 4]]
    assert found(x, "F64", 1) == [[3, 4]]


def test_large_k_splits_without_the_quadratic_path():
    """k = 1024 on bf16: buckets wider than the data; the jumps (signs) split it instead."""
    rng = np.random.default_rng(13)
    f = (rng.standard_normal((400, 24)) * 0.02).astype(np.float32)
    bits = (f.view(np.uint32) >> 16).astype(np.uint16)
    bits[[5, 6]] = bits[5]
    bits[7] = bits[5]
    bits[7][bits[5] < 0x8000] += 900  # its positive coordinates 900 ULPs up
    r = near_clusters(bits, "BF16", 1024)
    assert sorted(c.rows for c in r.clusters) == oracle_clusters(bits, "BF16", 1024) == [[5, 6, 7]]
    assert r.stats["dense_rows"] == 0 and r.stats["probe_grids"] == 0


def test_wide_random_matrix_with_a_planted_halo():
    """A random 3,000 x 64 bf16 matrix: only the planted hole, halo and K/K+1 rows cluster."""
    rng = np.random.default_rng(7)
    keys = oracle_keys(rng.integers(0, 1 << 16, (3000, 64)).astype(np.uint16), 16) // 4  # no NaN/inf codes
    hole = keys[10].copy()
    for r in (20, 30, 40):
        keys[r] = hole  # the hole: rows 10, 20, 30, 40
    keys[50] = hole + np.eye(64, dtype=np.int64)[5] * 3  # halo: 3 ULPs in one coordinate
    keys[60] = hole - np.eye(64, dtype=np.int64)[9] * 8  # exactly k = 8 from the hole
    keys[70] = hole + np.eye(64, dtype=np.int64)[9] * 9  # k + 1 from the hole (and 12 from row 50, 17 from 60)
    keys[70, 5] += 3
    bits = from_keys(keys, 16)
    r = near_clusters(bits, "BF16", 8)
    assert [c.rows for c in r.clusters] == [[10, 20, 30, 40, 50, 60]]
    assert r.halo(0) == [50, 60] and r.clusters[0].holes == [0]
    assert found(bits, "BF16", 9) == [[10, 20, 30, 40, 50, 60, 70]]


# ---------------------------------------------------------------------------- grids and planted offsets


def test_bf16_values_in_f32_count_bf16_ulps():
    rng = np.random.default_rng(3)
    base = (rng.standard_normal((40, 16)).astype(np.float32).view(np.uint32) & 0xFFFF0000)
    base[1] = base[0] + (2 << 16)  # 2 bf16 ULPs (away from zero) in every coordinate
    x = base.view(np.float32)
    r = near_clusters(x, "F32", 2)
    assert r.grid == "BF16" and "BF16 grid" in r.grid_note
    assert [c.rows for c in r.clusters] == [[0, 1]] and r.clusters[0].diameter_ulps == 2
    assert near_clusters(x, "F32", 1).clusters == []
    off = x.copy()
    off[5, 3] = np.nextafter(off[5, 3], np.float32(np.inf))  # one value leaves the bf16 grid
    r = near_clusters(off, "F32", 2)
    assert r.grid == "F32" and r.clusters == []  # 2 bf16 ULPs = 131,072 f32 ULPs


def ulps_up(v, n):
    for _ in range(n):
        v = np.nextafter(v, type(v)(np.inf))
    return v


@pytest.mark.parametrize("dtype,np_dtype", [("F16", np.float16), ("F32", np.float32), ("F64", np.float64)])
def test_planted_offsets_on_the_storage_grid(dtype, np_dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 12)).astype(np_dtype)
    if dtype == "F32":
        x += np_dtype(1e-7) * rng.standard_normal((30, 12)).astype(np_dtype)  # off the bf16 / f16 grids
    if dtype == "F64":
        x = x + 1e-12 * rng.standard_normal((30, 12))
    x[1] = x[0]
    x[1, 4] = ulps_up(x[0, 4], 3)  # 3 ULPs from row 0
    x[2] = x[0]
    x[2, 7] = ulps_up(x[0, 7], 4)  # 4 ULPs from row 0; from row 1: 3 (coordinate 4) and 4 (coordinate 7)
    r = near_clusters(x, dtype, 4)
    assert r.grid == dtype
    assert [c.rows for c in r.clusters] == [[0, 1, 2]]
    assert r.clusters[0].diameter_ulps == 4
    assert found(x, dtype, 3) == [[0, 1]]
    assert found(x, dtype, 2) == []


def test_signed_zeros_are_one_ulp_apart():
    x = np.float32([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0], [2.0, 3.0]])
    assert found(x, "F32", 0) == [[0, 2]]  # -0.0 is not +0.0: exact holes only
    r = near_clusters(x, "F32", 1)
    assert [c.rows for c in r.clusters] == [[0, 1, 2]] and r.halo(0) == [1]
    m = r.clusters[0].members[1]
    assert (m.row, m.ulps, m.differing, m.l2) == (1, 1, 1, 0.0)  # 1 ULP, 1 coordinate, L2 distance 0
    bits = np.array([[0x0000], [0x8000], [0x0001], [0x8001]], np.uint16)  # +0, -0, +tiny, -tiny
    assert found(bits, "BF16", 1) == [[0, 1, 2, 3]]
    assert found(bits[[2, 3]], "BF16", 2) == [] and found(bits[[2, 3]], "BF16", 3) == [[0, 1]]


def test_nans_are_near_nothing_but_identical_nan_rows_are_a_hole():
    x = np.float32([[np.nan, 1.0], [np.nan, 1.0], [0.0, 1.0], [0.0, 1.0000001], [np.nan, 1.0000001]])
    r = near_clusters(x, "F32", 10)
    assert [c.rows for c in r.clusters] == [[0, 1], [2, 3]]
    nan_hole = r.cluster_of(0)
    assert nan_hole.singletons == [] and nan_hole.diameter_ulps == 0 and r.halo(0) == []
    json.dumps(r.to_json())


def test_nan_keys_close_to_other_keys_are_still_near_nothing():
    """NaN bit patterns sit next to each other and next to inf; their keys are close, but never near."""
    bits = np.array([[0x7FC0, 1], [0x7FC1, 1], [0x7F81, 2], [0x7F80, 2], [0x7F80, 2]], np.uint16)
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]):
        r = near_clusters(bits[order], "BF16", 5)
        assert [sorted(np.array(order)[c.rows].tolist()) for c in r.clusters] == [[3, 4]]  # inf rows: a hole


def test_infinity_is_one_ulp_above_the_largest_value():
    big = np.finfo(np.float32).max
    x = np.float32([[big, 0], [np.inf, 0], [-np.inf, 0]])
    assert found(x, "F32", 1) == [[0, 1]]


def test_k_zero_gives_exactly_the_holes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    x[[3, 50, 77]] = x[3]
    x[[9, 10]] = x[9]
    r = near_clusters(x, "F32", 0)
    assert [c.rows for c in r.clusters] == [[3, 50, 77], [9, 10]]
    assert [c.holes for c in r.clusters] == [[0], [1]] and all(c.singletons == [] for c in r.clusters)
    assert found(x, "F32", 0, groups=find_groups(x)) == found(x, "F32", 0)


def test_huge_k_makes_one_clique():
    bits = np.random.default_rng(6).integers(0, 0x7F00, (300, 5)).astype(np.uint16)
    bits[::2] |= 0x8000
    bits[7, 2] = 0x7FC0  # a NaN row stays out
    r = near_clusters(bits, "BF16", 1 << 16)
    assert [len(c.rows) for c in r.clusters] == [299] and 7 not in r.clusters[0].rows
    assert r.stats["clique_cells"] == 1


def test_a_chain_joins_through_its_links():
    """Rows 1 ULP apart in a line: one cluster at k = 1 whose diameter is the chain's length."""
    keys = np.zeros((40, 3), np.int64) + 100
    keys[:, 1] += np.arange(40)
    bits = from_keys(keys, 16)[np.random.default_rng(8).permutation(40)]
    r = near_clusters(bits, "BF16", 1)
    assert [c.rows for c in r.clusters] == [list(range(40))]
    assert r.clusters[0].diameter_ulps == 39 and r.clusters[0].holes == []
    assert r.clusters[0].reference == 0  # no hole: the smallest row


# ---------------------------------------------------------------------------- cluster statistics


def test_cluster_statistics_match_brute_force():
    rng = np.random.default_rng(9)
    keys = oracle_keys(rng.integers(0, 0x7000, (60, 10)).astype(np.uint16), 16)
    hole = keys[0].copy()
    keys[[0, 5, 6]] = hole  # hole 0 (3 rows)
    keys[[8, 9]] = hole + np.eye(10, dtype=np.int64)[2]  # hole 1 (2 rows), 1 ULP away
    for r in range(11, 20):
        keys[r] = hole + rng.integers(-3, 4, 10)
    bits = from_keys(keys, 16)
    r = near_clusters(bits, "BF16", 3)
    c = r.cluster_of(0)
    assert r.cluster_of(1) is c and c.holes == [0, 1] and c.reference == 0
    members = [m.row for m in c.members]
    assert members[0] == 0 and sorted(members) == [0, 8] + list(range(11, 20))
    assert sorted(c.singletons) == c.singletons == r.halo(1)
    k, v = keys[members], bits[members].astype(np.uint32) << 16
    values = v.view(np.float32).astype(np.float64)
    assert c.diameter_ulps == max(int(np.abs(a - b).max()) for a in k for b in k)
    assert c.max_l2 == pytest.approx(max(np.linalg.norm(a - b) for a in values for b in values), rel=1e-9)
    assert c.max_l2_exact
    for m, kk, vv in zip(c.members, k, values):
        assert m.ulps == int(np.abs(kk - k[0]).max())
        assert m.differing == int((kk != k[0]).sum())
        assert m.l2 == pytest.approx(np.linalg.norm(vv - values[0]), rel=1e-12, abs=0)
        assert m.size == (3 if m.row == 0 else 2 if m.row == 8 else 1)
    out = json.loads(json.dumps(r.to_json()))
    assert out["clusters"][0]["hole_ids"] == [1, 2] and out["grid"] == "BF16" and out["k"] == 3


def test_max_l2_bound_for_big_clusters(monkeypatch):
    monkeypatch.setattr(near, "EXACT_L2_ROWS", 3)
    keys = np.zeros((10, 4), np.int64) + 16000
    keys[:, 0] += np.arange(10)
    r = near_clusters(from_keys(keys, 16), "BF16", 1)
    c = r.clusters[0]
    values = (from_keys(keys, 16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    exact = max(np.linalg.norm(a - b) for a in values for b in values)
    assert not c.max_l2_exact and c.max_l2 >= exact * (1 - 1e-12)
    assert "upper bound" in c.to_json()["max_l2_method"]


def test_memmap_input(tmp_path):
    x = np.random.default_rng(10).standard_normal((100, 8)).astype(np.float32)
    x[[1, 2]] = x[1]
    x[3] = x[1]
    x[3, 0] = np.nextafter(x[1, 0], np.float32(9))
    np.save(tmp_path / "x.npy", x)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert found(m, "F32", 1) == found(x, "F32", 1) == [[1, 2, 3]]


# ---------------------------------------------------------------------------- anatomy


def test_anatomy_of_planted_holes():
    keys = np.zeros((12, 8), np.int64) + 15000
    keys[:, 6] = 0  # +0.0 everywhere
    holes = [keys[0].copy() for _ in range(4)]
    holes[1][2] += 1  # hole 1: 1 ULP from hole 0 in one coordinate
    holes[2][2] += 1
    holes[2][6] = -1  # hole 2: and -0.0 (1 ULP from hole 1 in one coordinate)
    holes[3][4] -= 5  # hole 3: 5 ULPs away
    for h, rows in enumerate(([0, 1, 2], [3, 4], [5, 6], [7, 8])):
        keys[rows] = holes[h]
    keys[9:, 0] += [100, 200, 300]  # three singletons
    bits = from_keys(keys, 16)
    groups = find_groups(bits)
    a = anatomy(bits, "BF16", groups)
    assert [list(g) for g in groups] == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    assert a.coordinates == [2, 4, 6] and a.spread_ulps == [1, 5, 1]
    assert a.offsets.tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, -1], [0, -5, 0]]
    assert a.ulps.tolist() == [[0, 1, 1, 5], [1, 0, 1, 5], [1, 1, 0, 5], [5, 5, 5, 0]]
    assert a.differing.tolist() == [[0, 1, 2, 1], [1, 0, 1, 2], [2, 1, 0, 3], [1, 2, 3, 0]]
    assert a.one_ulp_components == [[0, 1, 2], [3]]
    out = json.loads(json.dumps(a.to_json()))
    assert out["one_ulp_components"] == [[1, 2, 3], [4]] and out["coordinates"] == [2, 4, 6]


def test_anatomy_with_a_nan_hole_and_few_holes():
    x = np.float32([[np.nan, 1], [np.nan, 1], [0.5, 1], [0.5, 1], [3, 4]])
    a = anatomy(x, "F32", [[0, 1], [2, 3]])
    assert a.ulps.tolist() == [[0, ULP_NAN], [ULP_NAN, 0]]  # a NaN hole is near nothing (but is itself)
    assert a.to_json()["ulps"][0][1] is None and a.differing.tolist() == [[0, 1], [1, 0]]
    assert anatomy(x, "F32", []).coordinates == [] and anatomy(x, "F32", []).one_ulp_components == []
    same_nan = np.float32([[np.nan, 1], [np.nan, 1], [np.nan, 1.0000001], [np.nan, 1.0000001]])
    b = anatomy(same_nan, "F32", [[0, 1], [2, 3]])  # the NaN sits in a coordinate where both agree
    assert b.coordinates == [1] and b.ulps[0, 1] == ULP_NAN and b.one_ulp_components == [[0], [1]]
    one = anatomy(x, "F32", [[2, 3]])
    assert one.coordinates == [] and one.ulps.tolist() == [[0]] and one.one_ulp_components == [[0]]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("k,words", [(-1, "between 0 and"), (2**16 + 1, "between 0 and"), (True, "whole number"),
                                     (1.5, "whole number"), ("8", "whole number")])
def test_bad_k_refused(k, words):
    with pytest.raises(BlackholesError, match=words):
        near_clusters(np.zeros((3, 2), np.float32), "F32", k)


@pytest.mark.parametrize("array,dtype,words", [
    (np.zeros((3, 2), np.int32), "I32", "integer"),
    (np.zeros((3, 2), np.bool_), "BOOL", "integer"),
    (np.zeros((3, 34), np.uint8), "Q8_0", "dequantize"),
    (np.zeros(3, np.float32), "F32", "2-D"),
    (np.zeros((3, 2), np.float32), "BF16", "cannot hold"),
])
def test_matrices_without_a_grid_refused(array, dtype, words):
    for call in (lambda: near_clusters(array, dtype, 8), lambda: anatomy(array, dtype, [])):
        with pytest.raises(BlackholesError, match=words) as e:
            call()
        assert "\n" not in str(e.value)


def test_bad_groups_refused():
    x = np.zeros((4, 2), np.float32)
    for groups in ([[0]], [[0, 9]], [[1, 1]], [[0, 1], [1, 2]], [[-1, 0]]):
        with pytest.raises(BlackholesError, match="disjoint"):
            near_clusters(x, "F32", 1, groups=groups)
    x[3, 1] = -0.0
    for call in (lambda: near_clusters(x, "F32", 1, groups=[[0, 3]]), lambda: anatomy(x, "F32", [[2, 3]])):
        with pytest.raises(BlackholesError, match="bit-identical"):
            call()
    with pytest.raises(BlackholesError, match="no hole"):
        near_clusters(x, "F32", 1).halo(3)
