"""Under-trained indicators: planted dead rows rank first; the streamed cosine distance
equals a brute-force numpy version of Magikarp's formula; bad input is one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from blackholes.analysis.indicators import indicators
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import bf16_from_float32, to_float32
from blackholes.sources.matrix import Matrix


def planted(V=3000, D=32, seed=0, dead=25, hole=6, padding=0):
    """Trained-looking rows with one strong shared direction; ``dead`` rows and a ``hole`` of
    identical rows sit near the untrained init point, with a small norm."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(D)
    x = rng.standard_normal((V, D)) + np.outer(rng.standard_normal(V) * 4, shared / np.linalg.norm(shared))
    init = rng.standard_normal(D) * 0.05
    ids = rng.permutation(V - padding)[: dead + hole]
    dead_ids, hole_ids = np.sort(ids[:dead]), np.sort(ids[dead:])
    x[dead_ids] = init + rng.standard_normal((dead, D)) * 0.005
    x[hole_ids] = init
    if padding:
        x[V - padding:] = init + rng.standard_normal((padding, D)) * 0.005
    return x.astype(np.float32), dead_ids, hole_ids


def magikarp(x: np.ndarray, reference, fit) -> np.ndarray:
    """The brute-force oracle: exact PCA of the fitted rows (eigh), then Magikarp's formula."""
    x = x.astype(np.float64)
    c = x[fit] - x[fit].mean(axis=0)
    pc = np.linalg.eigh(c.T @ c)[1][:, -1]
    res = x - np.outer(x @ pc, pc)
    r = res[reference].mean(axis=0)
    return 1 - res @ r / (np.linalg.norm(res, axis=1) * np.linalg.norm(r))


def test_planted_dead_rows_rank_first():
    x, dead, hole = planted()
    ind = indicators(x, holes=[hole])
    assert ind.main == "cosine_to_reference" and ind.reference.tolist() == hole.tolist()
    assert ind.reference_from == {"holes": 6, "padding": 0, "unused": 0}
    assert sorted(ind.candidates[: len(dead)].tolist()) == dead.tolist()  # every planted row, before any other
    assert not set(ind.candidates) & set(hole)  # hole members are never candidates
    assert len(ind.candidates) == np.ceil(0.02 * (len(x) - len(hole)))  # the 2nd percentile of the eligible rows
    values = ind.values()[ind.candidates]
    assert np.all(np.diff(values) >= 0) and values[-1] <= ind.threshold


def test_cosine_matches_bruteforce_oracle():
    x, dead, hole = planted(V=2000, D=24, seed=3)
    fit = np.ones(len(x), bool)
    fit[hole] = False
    ind = indicators(x, holes=[hole], unused=dead[:5], n_iter=4)
    want = magikarp(x, ind.reference, fit)
    np.testing.assert_allclose(ind.cosine_to_reference, want, atol=2e-5)
    np.testing.assert_allclose(ind.norm, np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-6)
    assert ind.fit_rows == len(x) - len(hole) and 0 < ind.pc1_explained_variance_ratio < 1


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(4, 12), st.floats(2.0, 8.0))
@example(458, 5, 7.0)  # a row along the first PC: NaN, and the rest still matches
def test_cosine_matches_oracle_on_random_matrices(seed, D, strength):
    rng = np.random.default_rng(seed)
    V = 200
    axis = rng.standard_normal(D)
    x = rng.standard_normal((V, D)) + np.outer(rng.standard_normal(V) * strength, axis / np.linalg.norm(axis))
    x = x.astype(np.float32)
    ref = rng.choice(V, 7, replace=False)
    ind = indicators(x, reference=ref, n_iter=6)
    want = magikarp(x, np.sort(ref), np.ones(V, bool))
    # a row with (almost) nothing off the first PC has no direction: NaN by design (indicators._FLAT,
    # 1% of its norm), wherever the exact PCA says so, and nowhere else (seed 458, D 5, strength 7 has one)
    off = off_pc_share(x, np.ones(V, bool))
    undefined = np.isnan(ind.cosine_to_reference)
    assert np.all(off[undefined] <= 1.1e-2) and np.all(undefined[off < 0.9e-2])
    # float32 products, then removing a component up to 8x stronger than the rest: ~3 digits cancel
    np.testing.assert_allclose(ind.cosine_to_reference[~undefined], want[~undefined], atol=1e-3)


def off_pc_share(x: np.ndarray, fit) -> np.ndarray:
    """|x'| / |x| per row, x' the row without its exact first principal component (float64)."""
    x = x.astype(np.float64)
    c = x[fit] - x[fit].mean(axis=0)
    pc = np.linalg.eigh(c.T @ c)[1][:, -1]
    return np.linalg.norm(x - np.outer(x @ pc, pc), axis=1) / np.linalg.norm(x, axis=1)


def test_norm_is_the_main_indicator_without_reference():
    x, dead, _ = planted(hole=0)
    ind = indicators(x)
    assert ind.main == "norm" and ind.cosine_to_reference is None and len(ind.reference) == 0
    assert "no reference set" in ind.note
    assert sorted(ind.candidates[: len(dead)].tolist()) == dead.tolist()  # small norms first
    np.testing.assert_allclose(ind.values(), np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-6)
    with pytest.raises(BlackholesError, match="no cosine_to_reference"):
        ind.values("cosine_to_reference")


def test_reference_from_padding_and_unused_and_override():
    x, dead, hole = planted(V=1500, padding=40)
    pad = np.arange(1460, 1500)
    ind = indicators(x, holes=[hole], padding=pad, unused=[3, 4])
    assert ind.reference_from == {"holes": 6, "padding": 40, "unused": 2}
    assert set(ind.reference) == set(hole) | set(pad) | {3, 4}
    assert not set(ind.candidates) & (set(hole) | set(pad))  # padding rows are not tokens
    assert sorted(ind.candidates[: len(dead)].tolist()) == dead.tolist()
    given_ref = indicators(x, reference=dead[:3], holes=[hole])
    assert given_ref.reference_from == {"given": 3} and given_ref.reference.tolist() == dead[:3].tolist()


def test_zero_reference_falls_back_to_norm():
    x, dead, _ = planted(V=1000, hole=0, padding=8)
    x[-8:] = 0.0  # zero padding rows: their mean has no direction
    ind = indicators(x, padding=np.arange(992, 1000))
    assert ind.main == "norm" and "no component off the first principal direction" in ind.note


def test_bf16_and_dequantized_rows_read_through_float_rows():
    x, dead, hole = planted(V=1200, D=16)
    bits = bf16_from_float32(x)
    a = indicators(bits, dtype="BF16", holes=[hole])
    b = indicators(to_float32(bits, "BF16"), holes=[hole])
    np.testing.assert_allclose(a.cosine_to_reference, b.cosine_to_reference, atol=1e-6)
    assert a.candidates.tolist() == b.candidates.tolist()
    # A block-quantised stand-in: uint8 codes whose dequantize callable gives the values.
    codes = np.clip(np.round(x * 16) + 128, 0, 255).astype(np.uint8)
    m = Matrix(codes, "Q8_TEST", source="codes", path=None, key="emb",
               dequantize=lambda rows: (rows.astype(np.float32) - 128) / 16)
    q = indicators(m, holes=[hole])
    values = (codes.astype(np.float32) - 128) / 16
    np.testing.assert_allclose(q.norm, np.linalg.norm(values.astype(np.float64), axis=1), rtol=1e-6)
    assert q.passes == pytest.approx(q.n_iter + 2, abs=1)  # a handful of passes, never more


def test_to_json_is_strict_and_indexed_by_row():
    x, dead, hole = planted(V=800)
    x[5] = 0.0  # a zero row: no direction, so no cosine distance -- ranked first
    ind = indicators(x, holes=[hole])
    out = json.loads(json.dumps(ind.to_json(), allow_nan=False))
    assert out["main"] == "cosine_to_reference" and out["low_means_dead"] is True
    assert len(out["norm"]) == len(out["cosine_to_reference"]) == 800
    assert out["cosine_to_reference"][5] is None and out["candidates"][0]["id"] == 5
    assert out["reference"]["ids"] == hole.tolist() and out["reference"]["from"]["holes"] == 6
    assert out["pca"]["n_iter"] == 2 and out["threshold"] == pytest.approx(ind.threshold, rel=1e-6)


def test_to_json_with_categories():
    tokenizers = pytest.importorskip("tokenizers")
    from blackholes.analysis.scripts import byte_level_alphabet
    from blackholes.analysis.vocabulary import categorize

    alphabet = sorted(byte_level_alphabet(), key=byte_level_alphabet().get)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    x, dead, hole = planted(V=300, D=16, dead=5, hole=3, padding=44)
    cats = categorize(tok, rows=300)
    ind = indicators(x, holes=[hole], padding=cats.ids_with("padding"))
    first = ind.to_json(cats)["candidates"][0]
    assert first["id"] in dead and first["category"] == cats[first["id"]].category
    assert set(first) >= {"text", "script", "round_trip", "value", "norm"}


def test_bad_input():
    x, _, hole = planted(V=400)
    for p in (0, 100, -1, 150, "many"):
        with pytest.raises(BlackholesError, match="--percentile"):
            indicators(x, percentile=p)
    with pytest.raises(BlackholesError, match="--reference id 400 is out of range: the matrix has 400 rows"):
        indicators(x, reference=[1, 400])
    with pytest.raises(BlackholesError, match="--reference id -1 is out of range"):
        indicators(x, reference=[-1])
    with pytest.raises(BlackholesError, match="names no row ids"):
        indicators(x, reference=[])
    with pytest.raises(BlackholesError, match="hole member id 999"):
        indicators(x, holes=[[1, 999]])
    with pytest.raises(BlackholesError, match="n_iter"):
        indicators(x, n_iter=0)


def test_degenerate_matrices_use_the_norm():
    one_column = np.arange(10, dtype=np.float32)[:, None]
    ind = indicators(one_column, unused=[0, 1])
    assert ind.main == "norm" and "one column" in ind.note and ind.candidates.tolist() == [0]
    all_holes = np.ones((6, 3), np.float32)
    ind = indicators(all_holes, holes=[range(6)])
    assert ind.main == "norm" and len(ind.candidates) == 0
