"""Finding the one matrix: files, model folders (single, sharded, tied), the HF cache."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import bf16_from_float32
from blackholes.io.safetensors import open_tensor, read_header, save_safetensors
from blackholes.sources import load_matrix
from blackholes.sources.hf_cache import hf_cache_dir
from blackholes.sources.matrix import Matrix

V, D = 12, 8


def rows(seed: int, n: int = V, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def make_model(folder, *, tied=None, lm_head=True, sharded=False, tokenizer=False):
    """A tiny Hugging Face-style model folder; returns (embed, lm_head) arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    embed, head = rows(1), rows(2)
    weights = {"model.embed_tokens.weight": embed, "model.norm.weight": np.ones(D, np.float32)}
    if lm_head:
        weights["lm_head.weight"] = head
    config = {"model_type": "tiny", "vocab_size": V}
    if tied is not None:
        config["tie_word_embeddings"] = tied
    (folder / "config.json").write_text(json.dumps(config))
    if sharded:
        shards = {"model-00001-of-00002.safetensors": ["model.embed_tokens.weight", "model.norm.weight"],
                  "model-00002-of-00002.safetensors": [k for k in weights if k == "lm_head.weight"]}
        weight_map = {}
        for name, keys in shards.items():
            if keys:
                save_file({k: weights[k] for k in keys}, str(folder / name))
            weight_map.update({k: name for k in keys})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(weights, str(folder / "model.safetensors"))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return embed, head


# ---------------------------------------------------------------------------- files


def test_single_2d_tensor_is_picked(tmp_path):
    x = rows(0)
    save_file({"gamma": x, "bias": np.zeros(3, np.float32)}, str(tmp_path / "g.safetensors"))
    m = load_matrix(tmp_path / "g.safetensors")
    assert isinstance(m, Matrix) and m.key == "gamma" and m.dtype == "F32" and m.shape == (V, D)
    assert isinstance(m.array, np.memmap)
    np.testing.assert_array_equal(m.array, x)
    assert m.source == str(tmp_path / "g.safetensors") and m.tokenizer is None


def test_well_known_name_among_several(tmp_path):
    save_file({"lm_head.weight": rows(1), "other.weight": rows(2)}, str(tmp_path / "m.safetensors"))
    assert load_matrix(tmp_path / "m.safetensors").key == "lm_head.weight"


def test_ambiguous_file_lists_candidates(tmp_path):
    save_file({"a.weight": rows(1), "b.weight": rows(2)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(BlackholesError, match=r"several 2-D tensors.*--key.*a\.weight, b\.weight"):
        load_matrix(tmp_path / "m.safetensors")


def test_matrix_choice_in_a_lone_file(tmp_path):
    save_file({"model.embed_tokens.weight": rows(1), "lm_head.weight": rows(2)}, str(tmp_path / "m.safetensors"))
    assert load_matrix(tmp_path / "m.safetensors").key == "lm_head.weight"
    assert load_matrix(tmp_path / "m.safetensors", matrix="input").key == "model.embed_tokens.weight"
    save_file({"w": rows(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(BlackholesError, match="no input embedding with a known name.*--key: w"):
        load_matrix(tmp_path / "w.safetensors", matrix="input")


def test_key_not_found_lists_keys(tmp_path):
    save_file({"a": rows(1), "b": rows(2)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(BlackholesError, match=r"'c' not found.*keys: a, b"):
        load_matrix(tmp_path / "m.safetensors", key="c")


@pytest.mark.parametrize(
    "tensor, message",
    [(np.zeros((2, 3, 4), np.float32), "expected a 2-D"), (np.zeros((0, 4), np.float32), "empty"),
     (np.zeros((4, 0), np.float32), "empty")],
)
def test_bad_shapes(tmp_path, tensor, message):
    save_file({"t": tensor}, str(tmp_path / "m.safetensors"))
    with pytest.raises(BlackholesError, match=message):
        load_matrix(tmp_path / "m.safetensors", key="t")


def test_no_2d_tensor(tmp_path):
    save_file({"t": np.zeros(5, np.float32)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(BlackholesError, match="no 2-D tensor"):
        load_matrix(tmp_path / "m.safetensors")


def write_raw(path, header: bytes, data: bytes = b"", length: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"hello"), "not a safetensors file"),
        (lambda p: p.write_text("this is a text file, not tensors at all"), "not a safetensors file"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32"', length=500), "truncated"),
        (lambda p: write_raw(p, b"{not json}"), "corrupt JSON"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', b"\0" * 8),
         "truncated safetensors file"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}', b"\0" * 12),
         "does not match"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "Q4", "shape": [2, 1], "data_offsets": [0, 2]}}', b"\0" * 2),
         "has dtype Q4, which blackholes cannot read"),
        # values of the wrong type or size: one line each, never a TypeError or an overflow
        (lambda p: write_raw(p, b'{"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
         r"dtype \['F32'\] is not a name"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [1e20, 1], "data_offsets": [0, 4]}}', b"\0" * 4),
         "not a list of non-negative integers"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}'),
         "does not match its 0 bytes"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 0]}}'),
         "not a list of non-negative integers"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', b"\0" * 4),
         "end before they begin"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}', b"\0" * 4),
         "data_offsets '0-4' is not two"),
        (lambda p: write_raw(p, b'{"t": ["F32", [1], [0, 4]]}', b"\0" * 4), "entry is not a JSON object"),
        (lambda p: write_raw(p, b'{"t": {"dtype": "F4", "shape": [2, 2], "data_offsets": [0, 64]}}', b"\0" * 8),
         "truncated safetensors file"),
    ],
)
def test_bad_files(tmp_path, make, message):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(BlackholesError, match=message):
        load_matrix(path)


def test_dtypes_we_cannot_read_are_kept_until_chosen(tmp_path):
    """safetensors 0.8 writes F8_E8M0, F4, C64, ...: a file holding one is still readable."""
    x = rows(0)
    entries = {"gamma": {"dtype": "F32", "shape": [V, D], "data_offsets": [0, x.nbytes]},
               "scales": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [x.nbytes, x.nbytes + 4]},
               "packed": {"dtype": "F4", "shape": [2, 4], "data_offsets": [x.nbytes + 4, x.nbytes + 8]},
               "c": {"dtype": "C64", "shape": [1, 1], "data_offsets": [x.nbytes + 8, x.nbytes + 16]}}
    path = write_raw(tmp_path / "m.safetensors", json.dumps(entries).encode(), x.tobytes() + b"\1" * 16)
    header = read_header(path)
    assert header.tensors["scales"].dtype == "F8_E8M0" and header.tensors["packed"].shape == (2, 4)
    m = load_matrix(path, key="gamma")
    np.testing.assert_array_equal(m.array, x)
    with pytest.raises(BlackholesError, match=r"'c' in .* has dtype C64, which blackholes cannot read"):
        load_matrix(path, key="c")
    with pytest.raises(BlackholesError, match="has dtype F8_E8M0, which blackholes cannot read"):
        open_tensor(path, "scales")


def test_sharded_index_with_a_bad_weight_map_value(tmp_path):
    make_model(tmp_path / "m", tied=False, sharded=True)
    index = tmp_path / "m" / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["lm_head.weight"] = 5
    index.write_text(json.dumps(doc))
    with pytest.raises(BlackholesError, match="corrupt weight_map.*'lm_head.weight' maps to 5"):
        load_matrix(tmp_path / "m")


def test_missing_path(tmp_path):
    with pytest.raises(BlackholesError, match="no such file"):
        load_matrix(tmp_path / "nope.safetensors")
    with pytest.raises(BlackholesError, match="no such file"):
        load_matrix(str(tmp_path / "deep" / "nope"))


# ---------------------------------------------------------------------------- model folders


@pytest.mark.parametrize("sharded", [False, True])
def test_untied_model_scans_lm_head(tmp_path, sharded):
    embed, head = make_model(tmp_path / "m", tied=False, sharded=sharded)
    m = load_matrix(tmp_path / "m")
    assert m.key == "lm_head.weight"
    np.testing.assert_array_equal(m.array, head)
    inp = load_matrix(tmp_path / "m", matrix="input")
    assert inp.key == "model.embed_tokens.weight"
    np.testing.assert_array_equal(inp.array, embed)
    if sharded:
        assert m.path.name == "model-00002-of-00002.safetensors"
        assert inp.path.name == "model-00001-of-00002.safetensors"


@pytest.mark.parametrize("sharded", [False, True])
def test_tied_model_scans_input_embedding(tmp_path, sharded):
    embed, _ = make_model(tmp_path / "m", tied=True, sharded=sharded)
    m = load_matrix(tmp_path / "m")
    assert m.key == "model.embed_tokens.weight" and "tie_word_embeddings" in m.note
    np.testing.assert_array_equal(m.array, embed)
    assert load_matrix(tmp_path / "m", matrix="output").key == "model.embed_tokens.weight"


def test_no_lm_head_means_tied(tmp_path):
    make_model(tmp_path / "m", lm_head=False)
    m = load_matrix(tmp_path / "m")
    assert m.key == "model.embed_tokens.weight" and "no separate lm_head" in m.note


def test_sharded_reads_only_the_shards_it_needs(tmp_path):
    embed, head = make_model(tmp_path / "m", tied=False, sharded=True)
    # Move model.norm.weight to a third shard and corrupt it: it must never be opened.
    index = tmp_path / "m" / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["model.norm.weight"] = "model-extra.safetensors"
    index.write_text(json.dumps(doc))
    (tmp_path / "m" / "model-extra.safetensors").write_bytes(b"garbage")
    np.testing.assert_array_equal(load_matrix(tmp_path / "m").array, head)
    np.testing.assert_array_equal(load_matrix(tmp_path / "m", matrix="input").array, embed)
    with pytest.raises(BlackholesError, match="not a safetensors file"):
        load_matrix(tmp_path / "m", key="model.norm.weight")


def test_generic_names_inside_layers_are_not_taken(tmp_path):
    """RWKV-style layers end in "output.weight": never the output matrix by accident."""
    layer = {"blocks.0.attention.output.weight": rows(5, D, D), "decoder.output.weight": rows(6),
             "encoder.block.1.shared.weight": rows(7)}
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"model.embed_tokens.weight": rows(1), **layer}, str(folder / "model.safetensors"))
    m = load_matrix(folder)
    assert m.key == "model.embed_tokens.weight" and "no separate lm_head" in m.note
    save_file({"transformer.wte.weight": rows(1), **layer}, str(tmp_path / "f.safetensors"))
    assert load_matrix(tmp_path / "f.safetensors").key == "transformer.wte.weight"
    with pytest.raises(BlackholesError, match="no output embedding with a known name"):
        load_matrix(tmp_path / "f.safetensors", matrix="output")
    # a wrapper's prefix (not a numbered layer) is still seen through
    save_file({"vlm.text.transformer.wte.weight": rows(1), **layer}, str(folder / "model.safetensors"))
    assert load_matrix(folder).key == "vlm.text.transformer.wte.weight"


@pytest.mark.parametrize("in_folder", [False, True])
def test_output_matrix_must_have_one_row_per_token(tmp_path, in_folder):
    weights = {"model.embed_tokens.weight": rows(1), "lm_head.weight": rows(2, n=V + 4)}
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    source = tmp_path if in_folder else path
    with pytest.raises(BlackholesError, match=r"'lm_head.weight' \(shape \[16, 8\]\) does not have the input "
                       r"embedding 'model.embed_tokens.weight''s 12 rows.*--key"):
        load_matrix(source)
    assert load_matrix(source, matrix="input").key == "model.embed_tokens.weight"
    assert load_matrix(source, key="lm_head.weight").shape == (V + 4, D)


def test_key_in_sharded_model(tmp_path):
    make_model(tmp_path / "m", sharded=True)
    assert load_matrix(tmp_path / "m", key="model.embed_tokens.weight").key == "model.embed_tokens.weight"
    with pytest.raises(BlackholesError, match="not found.*keys: lm_head.weight"):
        load_matrix(tmp_path / "m", key="nope")


def test_other_embedding_names(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    save_file({"transformer.wte.weight": rows(3), "transformer.wpe.weight": rows(4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    assert load_matrix(folder).key == "transformer.wte.weight"
    pythia = tmp_path / "pythia"
    pythia.mkdir()
    save_file({"gpt_neox.embed_in.weight": rows(3), "embed_out.weight": rows(4)}, str(pythia / "model.safetensors"))
    assert load_matrix(pythia).key == "embed_out.weight"
    assert load_matrix(pythia, matrix="input").key == "gpt_neox.embed_in.weight"


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BlackholesError, match="no safetensors weights"):
        load_matrix(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(BlackholesError, match="pytorch_model.bin"):
        load_matrix(tmp_path)


def test_folder_with_unknown_names(tmp_path):
    save_file({"foo": rows(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(BlackholesError, match="--key.*foo"):
        load_matrix(tmp_path)


def test_tokenizer_beside_model(tmp_path):
    make_model(tmp_path / "m", tokenizer=True)
    assert load_matrix(tmp_path / "m").tokenizer == tmp_path / "m" / "tokenizer.json"


# ---------------------------------------------------------------------------- HF cache


def make_cache(hub, repo_id="org/tiny", revision="0123abcd", ref=True, **kw):
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    make_model(snap, **kw)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snap


def test_model_id_from_hf_hub_cache(tmp_path, monkeypatch):
    snap = make_cache(tmp_path / "hub", tied=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    m = load_matrix("org/tiny")
    assert m.source == "org/tiny" and m.path == snap / "model.safetensors"
    assert m.key == "model.embed_tokens.weight"


def test_model_id_from_hf_home(tmp_path, monkeypatch):
    make_cache(tmp_path / "home" / "hub", tied=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    assert load_matrix("org/tiny").key == "lm_head.weight"


def test_model_id_revision_and_missing_ref(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    make_cache(tmp_path / "hub", revision="aaaa", ref=False)
    assert load_matrix("org/tiny").path.parent.name == "aaaa"  # the only snapshot
    make_cache(tmp_path / "hub", revision="bbbb", ref=False)
    with pytest.raises(BlackholesError, match="2 snapshots"):
        load_matrix("org/tiny")
    assert load_matrix("org/tiny@bbbb").path.parent.name == "bbbb"


def test_model_id_at_a_revision_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    make_cache(tmp_path / "hub", revision="aaaa")  # refs/main -> aaaa
    make_cache(tmp_path / "hub", revision="bbbb", ref=False)
    with pytest.raises(BlackholesError) as e:
        load_matrix("org/tiny@v2")
    text = str(e.value)
    assert "org/tiny is in the local Hugging Face cache" in text and "not at revision 'v2'" in text
    assert "snapshots aaaa, bbbb; refs main -> aaaa" in text and "\n" not in text
    assert load_matrix("org/tiny@main").path.parent.name == "aaaa"
    assert load_matrix("org/tiny@bbbb").path.parent.name == "bbbb"


def test_model_id_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(BlackholesError, match=r"not in the local Hugging Face cache.*nothing is downloaded"):
        load_matrix("org/absent")


# ---------------------------------------------------------------------------- writing


def test_save_safetensors_roundtrip_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    x = rows(5)
    tensors = {
        "mask": np.array([True, False, True]),
        "ids": np.arange(4, dtype=np.int32),
        "bf16": (bf16_from_float32(x), "BF16"),
        "f16": x.astype(np.float16),
        "empty": (np.zeros((0, D), np.uint16), "BF16"),
    }
    save_safetensors(tmp_path / "o.safetensors", tensors, metadata={"k": "v"})
    t = load_file(str(tmp_path / "o.safetensors"))
    assert t["mask"].dtype == torch.bool and t["mask"].tolist() == [True, False, True]
    assert t["ids"].dtype == torch.int32
    assert t["bf16"].dtype == torch.bfloat16 and torch.equal(t["bf16"], torch.from_numpy(x).bfloat16())
    assert t["empty"].shape == (0, D)
    assert read_header(tmp_path / "o.safetensors").metadata == {"k": "v"}
    np.testing.assert_array_equal(open_tensor(tmp_path / "o.safetensors", "bf16"), bf16_from_float32(x))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_save_safetensors_rejects_wrong_width(tmp_path):
    with pytest.raises(BlackholesError, match="cannot hold BF16"):
        save_safetensors(tmp_path / "o.safetensors", {"x": (np.zeros(3, np.float32), "BF16")})
    assert not (tmp_path / "o.safetensors").exists()
