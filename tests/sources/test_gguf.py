"""GGUF sources: every tensor type, tied/untied, --key, split files, vocabularies, bad input.

Every file is written here with ``gguf.GGUFWriter`` (quantised data from
``gguf.quants.quantize``, or random blocks for the K- and IQ-quants that gguf cannot
quantise); ``gguf.GGUFReader`` and ``tokenizers``' byte-level decoder are the oracles.
"""

from __future__ import annotations

import mmap
import struct
import tempfile
from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackholes.analysis.exact import find_groups
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import bf16_from_float32, to_float32
from blackholes.sources.gguf import (
    StringArray,
    gguf_matrices,
    gguf_vocabulary,
    load_gguf,
    open_gguf_model,
    read_gguf_header,
)

Q = gguf.GGMLQuantizationType
QUANTIZED_FROM_FLOATS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf.quants.quantize can write these
RANDOM_BLOCKS = ("Q6_K", "Q4_K", "Q2_K", "IQ4_NL", "IQ4_XS")  # any bytes are valid blocks
ALL_TYPES = ("F32", "F16", "BF16") + QUANTIZED_FROM_FLOATS + RANDOM_BLOCKS


# ---------------------------------------------------------------------------- writing test files


def planted(rows: int, width: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """float32 rows with three planted groups of identical rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    groups = [[1, 5, 9], [2, rows - 1], [0, 3, 4, 7]]
    for g in groups:
        x[g[1:]] = x[g[0]]
    return x, groups


def stored(values: np.ndarray, type_name: str, seed: int = 0) -> np.ndarray:
    """The stored form of a matrix in ``type_name``: what GGUFWriter.add_tensor takes."""
    if type_name == "F32":
        return values
    if type_name == "F16":
        return values.astype(np.float16)
    if type_name == "BF16":
        return bf16_from_float32(values)
    if type_name in QUANTIZED_FROM_FLOATS:
        return gguf.quants.quantize(values, Q[type_name])
    block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
    rng = np.random.default_rng(seed)
    # bytes below 0x7C: every float16 scale inside a block is finite (no NaN warnings)
    data = rng.integers(0, 0x7C, (len(values), values.shape[1] // block * size), dtype=np.uint8)
    first = {}  # the float data's identical rows become identical blocks
    for i, row in enumerate(map(bytes, values)):
        data[i] = data[first.setdefault(row, i)]
    return data


def add(w: gguf.GGUFWriter, name: str, data: np.ndarray, type_name: str) -> None:
    raw = None if type_name in ("F32", "F16") else Q[type_name]
    w.add_tensor(name, data, raw_dtype=raw)


def write_gguf(path: Path, tensors: dict, *, vocab=None, split_max_tensors: int = 0, extra=None) -> Path:
    """tensors: name -> (stored array, type name); vocab: (model, tokens, types)."""
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    if vocab is not None:
        model, tokens, types = vocab
        w.add_tokenizer_model(model)
        w.add_token_list(tokens)
        w.add_token_types(types)
    for key, value in (extra or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_uint32(key, value)
    for name, (data, type_name) in tensors.items():
        add(w, name, data, type_name)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def brute_force_groups(array: np.ndarray) -> list[list[int]]:
    """The original notebook's method: a dict of row.tobytes()."""
    seen = defaultdict(list)
    for i in range(array.shape[0]):
        seen[np.asarray(array[i]).tobytes()].append(i)
    groups = [ids for ids in seen.values() if len(ids) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def one_line_error(call) -> str:
    with pytest.raises(BlackholesError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------------------- types and identity


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_every_type_maps_the_stored_rows_and_finds_the_planted_groups(tmp_path, type_name):
    width = 256 if type_name in RANDOM_BLOCKS else 64
    values, planted_groups = planted(20, width)
    data = stored(values, type_name)
    path = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (data, type_name)})

    m = load_gguf(path)
    assert (m.format, m.key, m.path, m.shape, m.tied) == ("gguf", "token_embd.weight", path, (20, width), True)
    assert m.dtype == type_name
    assert np.asarray(m.array).tobytes() == data.tobytes()  # exactly the stored bytes, rows intact
    quantized = type_name not in ("F32", "F16", "BF16")
    assert m.quantization == (type_name if quantized else None)
    assert m.array.dtype == {"F32": np.float32, "F16": np.float16}.get(type_name, np.uint8 if quantized else np.uint16)
    found = [g.tolist() for g in find_groups(m.array)]
    assert found == brute_force_groups(m.array)
    assert sorted(map(sorted, found)) == sorted(map(sorted, planted_groups))


def test_identity_is_of_the_quantised_row(tmp_path):
    values = planted(12, 64)[0]
    values[8] = values[6] * np.float32(1 + 2**-20)  # different floats ...
    assert values[8].tobytes() != values[6].tobytes()
    data = stored(values, "Q4_0")
    assert data[8].tobytes() == data[6].tobytes()  # ... the same Q4_0 blocks
    m = load_gguf(write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (data, "Q4_0")}))
    assert [6, 8] in [g.tolist() for g in find_groups(m.array)]
    assert m.quantization == "Q4_0" and m.dtype == "Q4_0"


@pytest.mark.parametrize("type_name", QUANTIZED_FROM_FLOATS + RANDOM_BLOCKS)
def test_dequantized_rows_equal_ggufs_dequantization_of_the_whole_tensor(tmp_path, type_name):
    width = 512 if type_name in RANDOM_BLOCKS else 96
    data = stored(planted(40, width, seed=3)[0], type_name, seed=3)
    m = load_gguf(write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (data, type_name)}))
    whole = gguf.quants.dequantize(data, Q[type_name])
    for rows in ([0], [3, 17, 39], list(range(40))):
        got = m.dequantize(m.array[rows])
        assert got.dtype == np.float32 and got.shape == (len(rows), width)
        assert got.view(np.uint32).tobytes() == whole[rows].view(np.uint32).tobytes()  # bit for bit
    assert m.float_rows(5, 9).view(np.uint32).tobytes() == whole[5:9].view(np.uint32).tobytes()


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_rows_of_plain_types_are_the_values(tmp_path, type_name):
    values = planted(12, 32)[0]
    data = stored(values, type_name)
    m = load_gguf(write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (data, type_name)}))
    expect = to_float32(data, "BF16") if type_name == "BF16" else data.astype(np.float32)
    assert m.dequantize is None and np.array_equal(m.float_rows(0, 12), expect)


def test_only_the_chosen_tensors_bytes_are_mapped(tmp_path):
    data = stored(planted(30, 64)[0], "Q8_0")
    other = np.ones((4, 64), np.float32)
    path = write_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": (other, "F32"),
                                            "token_embd.weight": (data, "Q8_0"),
                                            "output_norm.weight": (other, "F32")})
    m = load_gguf(path)
    reader_tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    assert m.array.offset == reader_tensor.data_offset
    assert m.array.nbytes == data.nbytes == reader_tensor.n_bytes
    assert len(m.array._mmap) <= m.array.nbytes + mmap.ALLOCATIONGRANULARITY  # the map covers this tensor only
    assert not m.array.flags.writeable


@settings(max_examples=25, deadline=None)
@given(
    type_name=st.sampled_from(("F16", "BF16", "Q8_0", "Q4_0", "IQ4_NL")),
    rows=st.integers(2, 24),
    blocks=st.integers(1, 3),
    copies=st.lists(st.tuples(st.integers(0, 23), st.integers(0, 23)), max_size=12),
    seed=st.integers(0, 2**16),
)
def test_property_groups_equal_brute_force(type_name, rows, blocks, copies, seed):
    rng = np.random.default_rng(seed)
    values = (rng.integers(-3, 4, (rows, 32 * blocks)) * 0.5).astype(np.float32)  # coarse: collisions happen
    for src, dst in copies:
        values[dst % rows] = values[src % rows]
    data = stored(values, type_name, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        m = load_gguf(write_gguf(Path(tmp) / "p.gguf", {"token_embd.weight": (data, type_name)}))
        assert [g.tolist() for g in find_groups(m.array)] == brute_force_groups(data)
        del m


# ---------------------------------------------------------------------------- the header against gguf's reader


def test_header_agrees_with_ggufreader(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "h.gguf", "qwen2")
    w.add_uint8("t.u8", 7); w.add_int8("t.i8", -7); w.add_uint16("t.u16", 65535); w.add_int16("t.i16", -3)
    w.add_uint32("t.u32", 2**32 - 1); w.add_int32("t.i32", -(2**31)); w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**64 - 1); w.add_int64("t.i64", -(2**63)); w.add_float64("t.f64", 1e300)
    w.add_bool("t.bool", True); w.add_string("t.str", "héllo ▁")
    w.add_array("t.ints", [1, 2, 3]); w.add_array("t.floats", [0.5, 1.5]); w.add_array("t.strs", ["a", "", "ü"])
    for i, (shape, type_name) in enumerate([((3, 64), "F32"), ((2, 32), "Q8_0"), ((5, 256), "Q6_K"), ((7,), "F32")]):
        data = stored(np.ones(shape, np.float32).reshape(-1, shape[-1]), type_name).reshape(*shape[:-1], -1)
        add(w, f"t{i}", data, type_name)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    reader = gguf.GGUFReader(tmp_path / "h.gguf")
    header = read_gguf_header(tmp_path / "h.gguf")
    assert header.data_offset == reader.data_offset and header.alignment == reader.alignment
    for t in reader.tensors:
        mine = header.tensors[t.name]
        assert (mine.type_id, mine.ne, mine.offset, mine.nbytes) == (
            int(t.tensor_type), tuple(int(x) for x in t.shape), t.data_offset, t.n_bytes)
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = header.metadata[key]
        expect = field.contents()
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, StringArray):
            value = list(value)
        assert value == expect, key


# ---------------------------------------------------------------------------- which matrix


def two_matrices(tmp_path, *, untied: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    emb = stored(planted(16, 64, seed=1)[0], "Q8_0")
    out = stored(planted(16, 64, seed=2)[0], "Q4_0")
    tensors = {"token_embd.weight": (emb, "Q8_0"), "blk.0.ffn_up.weight": (np.ones((4, 64), np.float32), "F32")}
    if untied:
        tensors["output.weight"] = (out, "Q4_0")
    return write_gguf(tmp_path / "m.gguf", tensors), emb, out


def test_tied_model_output_is_the_input_embedding(tmp_path):
    path, emb, _ = two_matrices(tmp_path, untied=False)
    assert gguf_matrices(path) == {"input": "token_embd.weight", "output": "token_embd.weight", "tied": True}
    for matrix in (None, "output", "input"):
        m = load_gguf(path, matrix=matrix)
        assert m.key == "token_embd.weight" and m.tied is True
        assert np.asarray(m.array).tobytes() == emb.tobytes()
    assert "tied" in load_gguf(path).note


def test_untied_model_output_is_output_weight(tmp_path):
    path, emb, out = two_matrices(tmp_path, untied=True)
    assert gguf_matrices(path) == {"input": "token_embd.weight", "output": "output.weight", "tied": False}
    m = load_gguf(path)
    assert (m.key, m.dtype, m.matrix, m.tied) == ("output.weight", "Q4_0", "output", False)
    assert np.asarray(m.array).tobytes() == out.tobytes()
    m = load_gguf(path, matrix="input")
    assert (m.key, m.dtype, m.matrix) == ("token_embd.weight", "Q8_0", "input")
    assert np.asarray(m.array).tobytes() == emb.tobytes()


def test_key_names_any_tensor_and_an_unknown_key_lists_them(tmp_path):
    path, _, _ = two_matrices(tmp_path, untied=True)
    m = load_gguf(path, key="blk.0.ffn_up.weight")
    assert (m.key, m.dtype, m.shape, m.note) == ("blk.0.ffn_up.weight", "F32", (4, 64), "--key")
    message = one_line_error(lambda: load_gguf(path, key="lm_head.weight"))
    assert "lm_head.weight" in message and "token_embd.weight" in message and "output.weight" in message


def test_an_output_matrix_with_other_rows_is_not_guessed(tmp_path):
    emb, out = np.ones((16, 64), np.float32), np.ones((12, 64), np.float32)
    path = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (emb, "F32"), "output.weight": (out, "F32")})
    assert "--key" in one_line_error(lambda: load_gguf(path))
    assert load_gguf(path, key="output.weight").shape == (12, 64)
    assert load_gguf(path, matrix="input").shape == (16, 64)


def test_no_embedding_and_bad_matrix_are_refused(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", {"blk.0.ffn_up.weight": (np.ones((4, 64), np.float32), "F32")})
    assert gguf_matrices(path) == {"input": None, "output": None, "tied": False}
    assert "--key" in one_line_error(lambda: load_gguf(path))
    assert "token_embd.weight" in one_line_error(lambda: load_gguf(path, matrix="input"))
    assert "both" in one_line_error(lambda: load_gguf(path, matrix="both"))
    vector = write_gguf(tmp_path / "v.gguf", {"token_embd.weight": (np.ones(64, np.float32), "F32")})
    assert "2-D" in one_line_error(lambda: load_gguf(vector))


# ---------------------------------------------------------------------------- split files


def split_model(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    emb = stored(planted(12, 64, seed=4)[0], "Q8_0")
    out = stored(planted(12, 64, seed=5)[0], "F16")
    vocab = ("gpt2", [f"t{i}" for i in range(12)], [1] * 12)
    write_gguf(tmp_path / "model.gguf", {"token_embd.weight": (emb, "Q8_0"),
                                         "blk.0.ffn_up.weight": (np.ones((4, 64), np.float32), "F32"),
                                         "output.weight": (out, "F16")}, vocab=vocab, split_max_tensors=1)
    return tmp_path, emb, out


def test_split_files_are_read_as_one_model(tmp_path):
    folder, emb, out = split_model(tmp_path)
    shards = sorted(p.name for p in folder.glob("*.gguf"))
    assert shards == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for given_shard in shards:  # any part names the whole model
        m = load_gguf(folder / given_shard)
        assert (m.key, m.path.name, m.tied) == ("output.weight", "model-00003-of-00003.gguf", False)
        assert np.asarray(m.array).tobytes() == out.tobytes()
        assert m.vocabulary is not None and m.vocabulary.pieces[11] == "t11"  # from the first part
    m = load_gguf(folder / shards[2], matrix="input")
    assert m.path.name == shards[0] and np.asarray(m.array).tobytes() == emb.tobytes()
    assert [p.name for p in open_gguf_model(folder / shards[1]).shards] == shards


def test_split_files_read_the_named_part_first_and_map_only_the_chosen_tensor(tmp_path):
    folder, _, _ = split_model(tmp_path)
    model = open_gguf_model(folder / "model-00002-of-00003.gguf")
    assert model.headers[0] is None and model.headers[1] is not None and model.headers[2] is None
    # finding a tensor reads every part's directory (a tensor in two parts is refused), no tensor data
    assert model.find("token_embd.weight").path.name == "model-00001-of-00003.gguf"
    m = load_gguf(folder / "model-00002-of-00003.gguf", matrix="input")
    assert m.path.name == "model-00001-of-00003.gguf" and isinstance(m.array, np.memmap)
    assert [p.name for p in m.inputs] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_split_names_that_cannot_be_and_a_tensor_in_two_parts_are_refused(tmp_path):
    folder, _, _ = split_model(tmp_path)
    first = folder / "model-00001-of-00003.gguf"
    for name, words in (("model-00004-of-00003.gguf", "part 4 of 3"), ("model-00001-of-00000.gguf", "part 1 of 0"),
                        ("model-00000-of-00003.gguf", "part 0 of 3")):
        (folder / name).write_bytes(first.read_bytes())
        assert words in one_line_error(lambda: load_gguf(folder / name))
    # the third part of another split whose tensors are in another order: output.weight twice
    other = tmp_path / "other"
    other.mkdir()
    emb = np.ones((12, 64), np.float32)
    write_gguf(other / "model.gguf", {"token_embd.weight": (emb, "F32"), "blk.0.ffn_up.weight": (emb, "F32"),
                                      "output.weight": (emb, "F32")}, split_max_tensors=1)
    twice = tmp_path / "twice"
    twice.mkdir()
    write_gguf(twice / "model.gguf", {"token_embd.weight": (emb, "F32"), "output.weight": (emb, "F32"),
                                      "blk.0.ffn_up.weight": (emb, "F32")}, split_max_tensors=1)
    (twice / "model-00003-of-00003.gguf").write_bytes((other / "model-00003-of-00003.gguf").read_bytes())
    for part in (1, 2, 3):
        assert "in two parts" in one_line_error(lambda: load_gguf(twice / f"model-0000{part}-of-00003.gguf"))


def test_split_files_missing_or_misnamed_parts_are_refused(tmp_path):
    folder, _, _ = split_model(tmp_path)
    first = folder / "model-00001-of-00003.gguf"
    (folder / "alone.gguf").write_bytes(first.read_bytes())
    assert "-of-00003.gguf" in one_line_error(lambda: load_gguf(folder / "alone.gguf"))
    (folder / "model-00002-of-00003.gguf").unlink()
    assert "model-00002-of-00003.gguf" in one_line_error(lambda: load_gguf(first))
    (folder / "other-00001-of-00002.gguf").write_bytes(first.read_bytes())
    (folder / "other-00002-of-00002.gguf").write_bytes((folder / "model-00003-of-00003.gguf").read_bytes())
    assert "split.count" in one_line_error(lambda: load_gguf(folder / "other-00001-of-00002.gguf"))


# ---------------------------------------------------------------------------- vocabularies


def byte_level(text: str) -> str:
    """GPT-2's byte-level form of text, by the tokenizers library (the oracle)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return "".join(piece for piece, _ in pre.pre_tokenize_str(text))


def vocab_model(tmp_path, model: str, tokens: list[str], types: list[int], rows: int | None = None) -> Path:
    data = np.arange((rows or len(tokens)) * 32, dtype=np.float32).reshape(-1, 32)
    return write_gguf(tmp_path / f"{model}.gguf", {"token_embd.weight": (data, "F32")}, vocab=(model, tokens, types))


def test_gpt2_style_vocabulary_is_decoded_as_the_tokenizer_would(tmp_path):
    tokens = [byte_level(" the"), byte_level("\n"), byte_level("你"), "ä", "<|endoftext|>", "<think>", "Ġ", "plain"]
    types = [1, 1, 1, 1, 3, 4, 1, 1]
    v = load_gguf(vocab_model(tmp_path, "gpt2", tokens, types, rows=10)).vocabulary
    assert v.model == "gpt2" and v.size == 8  # 10 rows: rows 8 and 9 are padding
    assert list(v.pieces) == tokens
    assert list(v.text) == [" the", "\n", "你", None, "<|endoftext|>", "<think>", " ", "plain"]
    assert list(v.types) == ["normal"] * 4 + ["control", "user_defined", "normal", "normal"]


def test_every_byte_level_character_decodes_like_tokenizers():
    from tokenizers import decoders, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    decode = decoders.ByteLevel()
    v = gguf_vocabulary({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": string_array(alphabet)})
    for piece, text in zip(alphabet, v.text):
        expect = decode.decode([piece])
        assert text == (None if "\ufffd" in expect else expect), piece


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_property_byte_level_pieces_decode_back_to_their_text(text):
    v = gguf_vocabulary({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": string_array([byte_level(text)])})
    assert v.text[0] == text


def test_llama_style_vocabulary_is_decoded_as_sentencepiece_would(tmp_path):
    tokens = ["<unk>", "<s>", "</s>", "<0x0A>", "<0xE4>", "\u2581the", "\u2581\u2581", "ing", "<start_of_turn>"]
    types = [2, 3, 3, 6, 6, 1, 1, 1, 4]
    v = load_gguf(vocab_model(tmp_path, "llama", tokens, types)).vocabulary
    assert v.model == "llama" and list(v.pieces) == tokens
    assert list(v.text) == ["<unk>", "<s>", "</s>", "\n", None, " the", "  ", "ing", "<start_of_turn>"]
    assert list(v.types) == ["unknown", "control", "control", "byte", "byte", "normal", "normal", "normal",
                             "user_defined"]


def test_vocabulary_without_types_or_tokens(tmp_path):
    assert gguf_vocabulary({}) is None
    v = gguf_vocabulary({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": string_array(["\u2581a", "<0x41>"])})
    assert v.types is None and list(v.text) == [" a", "A"]
    v = gguf_vocabulary({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": string_array(["##ing"])})
    assert list(v.text) == ["##ing"]  # an unknown decoder: the piece as stored


def test_string_arrays_and_vocabularies_index_like_lists():
    a = string_array(["x", "", "\u2581y", "<0x0A>"])
    assert (len(a), a[0], a[1], a[-1], a[1:3], a[::-2]) == (4, "x", "", "<0x0A>", ["", "\u2581y"], ["<0x0A>", ""])
    assert a == ["x", "", "\u2581y", "<0x0A>"] and a != ["x"]
    with pytest.raises(IndexError):
        a[4]
    v = gguf_vocabulary({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": a,
                         "tokenizer.ggml.token_type": np.array([1, 1, 1, 6], np.int32)})
    assert (v.size, v.text[-1], v.text[2:], v.types[-1]) == (4, "\n", [" y", "\n"], "byte")
    assert v.text == ["x", "", " y", "\n"] and len(v.types) == 4
    with pytest.raises(IndexError):
        v.text[-5]
    assert gguf_vocabulary({"tokenizer.ggml.tokens": a, "tokenizer.ggml.token_type": np.array([1])}).types is None


def string_array(strings: list[str]) -> StringArray:
    data, starts = b"", []
    for s in strings:
        starts.append(len(data))
        raw = s.encode()
        data += struct.pack("<Q", len(raw)) + raw
    return StringArray(data, np.array(starts, np.int64))


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def good(tmp_path) -> Path:
    vocab = ("gpt2", ["a", "b", "c", "d"], [1, 1, 1, 1])
    return write_gguf(tmp_path / "good.gguf", {"token_embd.weight": (stored(planted(12, 64)[0], "Q8_0"), "Q8_0"),
                                               "output_norm.weight": (np.ones(64, np.float32), "F32")}, vocab=vocab)


def patched(path: Path, offset: int, fmt: str, value, name: str = "bad.gguf") -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    out = path.with_name(name)
    out.write_bytes(bytes(data))
    return out


def tensor_field_offset(path: Path, name: str) -> int:
    """Byte offset of a tensor's directory entry (its name length), from gguf's reader."""
    return next(t.field.offset for t in gguf.GGUFReader(path).tensors if t.name == name)


def test_every_truncation_is_one_clear_line(good):
    data = good.read_bytes()
    reader = gguf.GGUFReader(good)
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    cuts = sorted(set(range(0, reader.data_offset + 8, 3)) | set(range(reader.data_offset, end, 97)) | {end - 1})
    for cut in cuts:
        (good.parent / "cut.gguf").write_bytes(data[:cut])
        message = one_line_error(lambda: load_gguf(good.parent / "cut.gguf"))
        assert "cut.gguf" in message


def test_corrupt_headers_are_one_clear_line(good):
    assert "magic" in one_line_error(lambda: load_gguf(patched(good, 0, "4s", b"GGML")))
    assert "version 1 " in one_line_error(lambda: load_gguf(patched(good, 4, "<I", 1)))
    assert "version 99" in one_line_error(lambda: load_gguf(patched(good, 4, "<I", 99)))
    assert "big-endian" in one_line_error(lambda: load_gguf(patched(good, 4, ">I", 3)))
    assert "tensor count" in one_line_error(lambda: load_gguf(patched(good, 8, "<Q", 2**60)))
    assert "metadata count" in one_line_error(lambda: load_gguf(patched(good, 16, "<Q", 2**40)))
    fields = gguf.GGUFReader(good).fields
    key = fields["tokenizer.ggml.tokens"]
    count_at = key.offset + 8 + len("tokenizer.ggml.tokens") + 4 + 4
    huge = patched(good, count_at, "<Q", 2**50)
    assert "length of 'tokenizer.ggml.tokens'" in one_line_error(lambda: load_gguf(huge))
    first_string = count_at + 8
    assert "run past the end" in one_line_error(lambda: load_gguf(patched(good, first_string, "<Q", 2**40)))
    type_at = key.offset + 8 + len("tokenizer.ggml.tokens")
    assert "value type 42" in one_line_error(lambda: load_gguf(patched(good, type_at, "<I", 42)))
    model = fields["tokenizer.ggml.model"]  # renamed to an earlier key of the same length
    assert "appears twice" in one_line_error(lambda: load_gguf(patched(good, model.offset + 8, "20s",
                                                                       b"general.architecture")))


def test_corrupt_tensor_directories_are_one_clear_line(good):
    at = tensor_field_offset(good, "token_embd.weight") + 8 + len("token_embd.weight")
    assert "dimensions" in one_line_error(lambda: load_gguf(patched(good, at, "<I", 7)))
    assert "past the end" in one_line_error(lambda: load_gguf(patched(good, at + 4 + 16 + 4, "<Q", 2**40)))
    assert "past the end" in one_line_error(lambda: load_gguf(patched(good, at + 4 + 8, "<Q", 10**6)))
    unknown = patched(good, at + 4 + 16, "<I", 99)
    assert "type 99" in one_line_error(lambda: load_gguf(unknown))
    other = tensor_field_offset(good, "output_norm.weight") + 8 + len("output_norm.weight") + 4 + 8
    assert load_gguf(patched(good, other, "<I", 99, "other.gguf")).dtype == "Q8_0"  # only the chosen one matters


def test_rows_not_a_whole_number_of_blocks_are_refused(good):
    at = tensor_field_offset(good, "token_embd.weight") + 8 + len("token_embd.weight") + 4
    assert "blocks of 32" in one_line_error(lambda: load_gguf(patched(good, at, "<Q", 40)))


def test_bad_alignment_and_missing_files(tmp_path, good):
    bad = write_gguf(tmp_path / "a.gguf", {"token_embd.weight": (np.ones((2, 32), np.float32), "F32")},
                     extra={"general.alignment": 32})
    at = gguf.GGUFReader(bad).fields["general.alignment"].offset + 8 + len("general.alignment") + 4
    assert "power of two" in one_line_error(lambda: load_gguf(patched(bad, at, "<I", 48)))
    assert "no such file" in one_line_error(lambda: load_gguf(tmp_path / "missing.gguf"))
    assert "no such file" in one_line_error(lambda: load_gguf(tmp_path))
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "too short" in one_line_error(lambda: load_gguf(tmp_path / "empty.gguf"))
    (tmp_path / "st.gguf").write_bytes(b"\x10" + bytes(7) + b'{"a": 1}     ' + bytes(64))
    assert "magic" in one_line_error(lambda: load_gguf(tmp_path / "st.gguf"))
