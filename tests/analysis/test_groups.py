"""Exact grouping: against a brute-force tobytes() reference, with forced hash collisions."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from support import planted

import blackholes
import blackholes.analysis.exact as scan_module
from blackholes.errors import BlackholesError
from blackholes.analysis.exact import find_groups
from blackholes.analysis.groups import ScanResult, scan
from blackholes.io.dtypes import bf16_from_float32
from blackholes.io.safetensors import open_tensor
from blackholes.sources import load_matrix


def reference(array: np.ndarray) -> list[list[int]]:
    """The original notebook's method: a dict keyed by each row's bytes."""
    by_bytes = defaultdict(list)
    for i in range(array.shape[0]):
        by_bytes[array[i].tobytes()].append(i)
    groups = [ids for ids in by_bytes.values() if len(ids) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def as_lists(groups) -> list[list[int]]:
    return [g.tolist() for g in groups]


# ---------------------------------------------------------------------------- exactness


def test_planted_groups_and_order():
    x = planted()
    got = as_lists(find_groups(x))
    assert got == reference(x)
    assert [len(g) for g in got] == [7, 5, 5, 2]
    fives = got[1:3]
    assert fives[0][0] < fives[1][0]  # equal sizes: smallest token id first


def test_signed_zero_differs_and_equal_nans_match():
    x = np.zeros((6, 3), np.float32)
    x[1, 0] = -0.0
    x[2, 0] = -0.0
    x[3, :] = np.nan
    x[4, :] = np.nan
    x[5, :] = np.frombuffer(np.uint32(0x7FC00001).tobytes() * 3, np.float32)  # another NaN payload
    assert as_lists(find_groups(x)) == [[1, 2], [3, 4]]  # row 0 (+0.0) is alone, so is row 5
    assert as_lists(find_groups(x)) == reference(x)


def test_prefix_shared_but_rows_differ():
    """Rows equal in their first 64 bytes and different later must not be grouped."""
    x = np.zeros((50, 64), np.float32)  # 256-byte rows, identical prefixes
    x[:, -1] = np.arange(50) % 10  # 10 groups of 5, told apart only by the last value
    assert as_lists(find_groups(x)) == reference(x)
    assert len(find_groups(x)) == 10


@pytest.mark.parametrize("bucket", [lambda h: h * 0, lambda h: h % np.uint64(3)])
def test_forced_collisions_are_split_exactly(monkeypatch, bucket):
    real = scan_module.hash_rows
    monkeypatch.setattr(scan_module, "hash_rows", lambda rows: bucket(real(rows)))
    for dtype in (np.float32, np.uint8, np.float16):
        x = planted(n=120, d=24, dtype=dtype, seed=3, sizes=(9, 4, 4, 3, 2))
        assert as_lists(find_groups(x)) == reference(x)
    x = np.zeros((40, 3), np.uint8)  # few distinct rows, all in one hash bucket
    x[:, 0] = np.arange(40) % 4
    assert as_lists(find_groups(x)) == reference(x)


@pytest.mark.parametrize("bucket", [lambda h: h * 0, lambda h: h % np.uint64(3), lambda h: h])
@pytest.mark.parametrize("chunk", [8, 64, 200])
def test_forced_collisions_in_small_chunks(monkeypatch, bucket, chunk):
    """Tiny chunks: every step (sieve, hash, verification) runs over many chunks, in hash order."""
    real = scan_module.hash_rows
    monkeypatch.setattr(scan_module, "hash_rows", lambda rows: bucket(real(rows)))
    monkeypatch.setattr(scan_module, "CHUNK_BYTES", chunk)
    for dtype, d in ((np.float32, 24), (np.uint8, 3), (np.float16, 40)):
        x = planted(n=150, d=d, dtype=dtype, seed=d, sizes=(9, 4, 4, 3, 2, 2, 2))
        assert as_lists(find_groups(x)) == reference(x)
    x = np.zeros((60, 20), np.uint8)  # equal 64-byte prefixes would not help: rows differ at the end
    x[:, -1] = np.arange(60) % 7
    assert as_lists(find_groups(x)) == reference(x)


def test_take_reads_the_rows_asked_for():
    rows = np.arange(20).reshape(10, 2)
    for ids in ([1, 3, 2, 4], [2, 3, 4], [4], [5, 4], [0, 2, 1, 3, 4], []):
        ids = np.array(ids, dtype=np.int64)
        np.testing.assert_array_equal(scan_module._take(rows, ids), rows[ids])


@pytest.mark.parametrize("swap", [False, True])
def test_verification_in_hash_order_needs_no_split(monkeypatch, swap):
    """Runs {1, 3} and {2, 4} listed in hash order as [1, 3, 2, 4] (for one of the two
    assignments) must verify as they are, without falling back to the exact split."""
    x = planted(n=8, d=4, sizes=())
    a, b = planted(n=2, d=4, seed=1, sizes=())
    a, b = (b, a) if swap else (a, b)
    x[[1, 3]], x[[2, 4]] = a, b
    calls = []
    real = scan_module._split_exactly
    monkeypatch.setattr(scan_module, "_split_exactly", lambda r, ids: calls.append(ids) or real(r, ids))
    assert as_lists(find_groups(x)) == reference(x) == [[1, 3], [2, 4]]
    assert calls == []


def test_bf16_and_upcast_f32_give_the_same_groups():
    f32 = planted(n=200, d=33, seed=5)
    bits = bf16_from_float32(f32)  # rounding may also create new equalities: still exact
    up = (bits.astype(np.uint32) << 16).view(np.float32)
    a = scan(bits, dtype="BF16")
    b = scan(up)
    assert a.dtype == "BF16" and b.dtype == "F32"
    assert [g.token_ids for g in a.groups] == [g.token_ids for g in b.groups]
    assert as_lists(find_groups(bits)) == reference(bits)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.float16, np.float32, np.float64, np.int64])
@pytest.mark.parametrize("d", [1, 3, 5, 16, 40])
def test_dtypes_and_odd_widths(dtype, d):
    x = planted(n=80, d=d, dtype=dtype, seed=d) if np.dtype(dtype).kind == "f" else (
        np.random.default_rng(d).integers(0, 3, size=(80, d)).astype(dtype)
    )
    assert as_lists(find_groups(x)) == reference(x)


def test_non_contiguous_input():
    x = planted(n=100, d=20)
    view = x[:, ::2]
    assert as_lists(find_groups(view)) == reference(np.ascontiguousarray(view))


_dtypes = st.sampled_from(["<u1", "<i2", "<u2", "<f2", "<f4", "<f8"])


@settings(max_examples=60, deadline=None)
@given(
    dtype=_dtypes,
    n=st.integers(1, 60),
    d=st.integers(1, 40),
    alphabet=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    collide=st.booleans(),
)
def test_property_matches_brute_force(dtype, n, d, alphabet, seed, collide):
    """Random raw bits (so NaNs, infinities and signed zeros occur) from a small
    alphabet of rows; optionally with a hash that collides on purpose."""
    rng = np.random.default_rng(seed)
    width = np.dtype(dtype).itemsize * d
    pool = rng.integers(0, 256, size=(alphabet, width), dtype=np.uint8)
    pool[:, : min(width, 4)] = 0  # shared prefixes too
    x = pool[rng.integers(0, alphabet, size=n)].view(dtype)
    if collide:
        original = scan_module.hash_rows
        scan_module.hash_rows = lambda rows: original(rows) % np.uint64(2)
        try:
            got = as_lists(find_groups(x))
        finally:
            scan_module.hash_rows = original
    else:
        got = as_lists(find_groups(x))
    assert got == reference(x)


# ---------------------------------------------------------------------------- the result


def test_result_fields_mask_and_ids():
    x = planted(n=100, d=16, seed=9, sizes=(4, 3))
    r = scan(x)
    assert isinstance(r, ScanResult) and r.shape == (100, 16) and r.dtype == "F32"
    assert [g.id for g in r.groups] == [1, 2] and [g.size for g in r.groups] == [4, 3]
    assert r.black_hole_tokens == 7 == int(r.mask.sum())
    assert r.unique_vectors == 100 - 7 + 2 == len({row.tobytes() for row in x})
    assert r.mask.dtype == bool and r.black_hole_id.dtype == np.int32
    for g in r.groups:
        assert (r.black_hole_id[g.token_ids] == g.id).all()
        assert r.vectors[g.id - 1].tobytes() == x[g.token_ids[0]].tobytes()
    assert (r.black_hole_id > 0).sum() == 7


def test_no_black_holes():
    r = scan(np.arange(20, dtype=np.float32).reshape(5, 4))
    assert r.groups == [] and r.black_hole_tokens == 0 and r.unique_vectors == 5
    assert "No black holes" in r.summary()
    assert r.vectors.shape == (0, 4)


def test_summary_like_the_notebook():
    r = scan(planted(n=300, d=8, sizes=(5, 3)))
    text = r.summary()
    for line in ("Shape: (300, 8)", "Dtype: F32", "Unique vectors: 294", "Degenerate groups: 2",
                 "Total black hole tokens: 8 (2.67%)", "Largest degenerate groups:", "1. 5 tokens", "2. 3 tokens"):
        assert line in text


def test_save_mask_readable_by_torch_in_source_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    bits = bf16_from_float32(planted(n=64, d=10, seed=2, sizes=(3, 2)))
    r = scan(bits, dtype="BF16")
    r.save_mask(tmp_path / "mask.safetensors")
    t = load_file(str(tmp_path / "mask.safetensors"))
    assert t["mask"].dtype == torch.bool and t["mask"].shape == (64,)
    assert t["mask"].numpy().tolist() == r.mask.tolist()
    assert t["black_hole_id"].dtype == torch.int32 and t["black_hole_id"].numpy().tolist() == r.black_hole_id.tolist()
    assert t["vectors"].dtype == torch.bfloat16 and t["vectors"].shape == (2, 10)
    for g in r.groups:
        assert t["vectors"][g.id - 1].view(torch.int16).numpy().view(np.uint16).tobytes() == bits[g.token_ids[0]].tobytes()


def test_json_report(tmp_path):
    x = planted(n=50, d=6, seed=4, sizes=(3, 2))
    save_file({"gamma": x}, str(tmp_path / "g.safetensors"))
    r = scan(tmp_path / "g.safetensors")
    doc = json.loads(json.dumps(r.to_json()))
    for k in ("source", "key", "shape", "dtype", "unique_vectors", "black_hole_tokens", "groups"):
        assert k in doc
    assert doc["key"] == "gamma" and doc["shape"] == [50, 6] and doc["dtype"] == "F32"
    assert [g["size"] for g in doc["groups"]] == [3, 2] and [g["id"] for g in doc["groups"]] == [1, 2]
    assert all(g["token_ids"] == sorted(g["token_ids"]) for g in doc["groups"])
    assert doc["groups"][0]["token_ids"] == reference(x)[0]


# ---------------------------------------------------------------------------- tokens


def write_tokenizer(path, n_tokens):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"tok{i}": i for i in range(n_tokens - 1)} | {"<unk>": n_tokens - 1}
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(path))


def test_tokens_and_padding_rows(tmp_path):
    x = planted(n=40, d=8, seed=1, sizes=(2,))
    x[34:] = 0.0  # six padding rows beyond a 34-token vocabulary, all zero: a black hole
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"model.embed_tokens.weight": x}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"tie_word_embeddings": true}')
    write_tokenizer(folder / "tokenizer.json", 34)
    r = scan(folder)
    assert r.vocab_size == 34 and r.tokenizer == str(folder / "tokenizer.json")
    pad = next(g for g in r.groups if g.token_ids[0] >= 34)
    assert pad.token_ids == [34, 35, 36, 37, 38, 39] and pad.tokens == [None] * 6
    other = next(g for g in r.groups if g is not pad)
    assert other.tokens == [f"tok{i}" for i in other.token_ids]
    doc = r.to_json()
    assert doc["vocab_size"] == 34 and doc["padding_rows"] == 6
    assert next(g for g in doc["groups"] if g["id"] == pad.id)["padding_rows"] == pad.token_ids
    assert "Padding rows" in r.summary() and "<pad>" in r.summary()
    # An explicit --tokenizer wins; a bad one is a clear error.
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BlackholesError, match="cannot read tokenizer"):
        scan(folder, tokenizer=tmp_path / "bad.json")


def test_readable_byte_level_tokens(tmp_path):
    """Decoded text when it is readable; the vocabulary piece for a lone UTF-8 byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from blackholes.sources.tokenizer import load_tokenizer, readable

    pieces = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġthe", "âĢ"]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)  # a folder holding tokenizer.json
    n = len(pieces)
    assert readable(tok, pieces.index("Ġthe")) == " the"
    assert readable(tok, pieces.index("âĢ")) == "âĢ"  # bytes E2 80: half a character
    assert readable(tok, n) == "<|endoftext|>"
    assert readable(tok, n + 1) is None


# ---------------------------------------------------------------------------- inputs


def test_sources_agree(tmp_path):
    x = planted(n=90, d=12, seed=6)
    save_file({"gamma": x}, str(tmp_path / "g.safetensors"))
    from_file = scan(tmp_path / "g.safetensors")
    from_matrix = scan(load_matrix(tmp_path / "g.safetensors"))
    from_array = scan(x)
    assert from_file.key == "gamma" and from_file.path == str(tmp_path / "g.safetensors")
    for r in (from_matrix, from_array):
        assert [g.token_ids for g in r.groups] == [g.token_ids for g in from_file.groups]
    assert blackholes.ScanResult is ScanResult


def test_package_level_call():
    """``blackholes.scan(...)`` works even after ``import blackholes.analysis.groups`` (the module)."""
    x = planted(n=30, d=4, seed=1, sizes=(3,))
    for _ in range(2):
        assert [g.size for g in blackholes.scan(x).groups] == [3]


def test_torch_bf16_tensor():
    torch = pytest.importorskip("torch")
    x = planted(n=70, d=9, seed=8)
    t = torch.from_numpy(x).bfloat16()
    r = scan(t)
    assert r.dtype == "BF16"
    assert [g.token_ids for g in r.groups] == reference(bf16_from_float32(x))


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros(5, np.float32), "2-D"), (np.zeros((0, 3), np.float32), "empty"), ([[1, 2]], "cannot scan"),
     (np.zeros((2, 2), np.complex64), "unsupported array dtype")],
)
def test_bad_arrays(bad, message):
    with pytest.raises(BlackholesError, match=message):
        scan(bad)


def test_dtype_must_fit():
    with pytest.raises(BlackholesError, match="cannot hold"):
        scan(np.zeros((2, 2), np.float32), dtype="BF16")


def test_memmap_is_not_copied(tmp_path):
    """The file's matrix is read through the memory map, in its own dtype."""
    bits = bf16_from_float32(planted(n=40, d=8, seed=7))
    from blackholes.io.safetensors import save_safetensors

    save_safetensors(tmp_path / "b.safetensors", {"w": (bits, "BF16")})
    m = load_matrix(tmp_path / "b.safetensors")
    assert isinstance(m.array, np.memmap) and m.dtype == "BF16"
    np.testing.assert_array_equal(open_tensor(tmp_path / "b.safetensors", "w"), bits)
    assert [g.token_ids for g in scan(m).groups] == reference(bits)


def test_near_on_quantised_rows_is_skipped_with_a_note_not_refused():
    """A Q8_0 output matrix has no ULP grid: --near is skipped for it (the F32 input still gets halos)."""
    from blackholes.sources.matrix import Matrix

    rows = np.random.default_rng(0).integers(0, 256, (20, 34), dtype=np.uint8)
    rows[3:6] = rows[3]
    m = Matrix(rows, "Q8_0", source="q.gguf", path=None, key="output.weight", format="gguf",
               quantization="Q8_0", width=32)
    r = scan(m, near=8)
    assert [g.token_ids for g in r.groups] == [[3, 4, 5]] and r.clusters is None
    assert "near" in r.notes[0] and "Q8_0" in r.notes[0] and r.to_json()["notes"] == r.notes
    assert "note: --near skipped" in r.summary()
    with pytest.raises(BlackholesError, match="no near-duplicate clusters"):
        r.halo(1)
    f = scan(planted(n=40, d=4, sizes=(3,)), near=0)
    with pytest.raises(BlackholesError, match="numbered 1 to 1"):
        f.halo(0)
