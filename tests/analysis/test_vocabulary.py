"""Token categories and scripts: three tokenizers built here (byte-level BPE with added
special tokens, a WordPiece with [unused…] slots, a SentencePiece-style Unigram with byte
fallback) cover every category; brute-force oracles check the batch code token by token."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: E402

from blackholes.analysis.scripts import (  # noqa: E402
    byte_category, byte_level_alphabet, byte_level_bytes, is_unused_name, readable_bytes, script_of, script_of_bytes,
)
from blackholes.analysis.vocabulary import CATEGORIES, GGUF_CATEGORIES, categorize, categorize_vocabulary  # noqa: E402
from blackholes.errors import BlackholesError  # noqa: E402
from blackholes.sources.matrix import Vocabulary  # noqa: E402

CHAR = {b: c for c, b in byte_level_alphabet().items()}  # byte -> its byte-level character


def spell(text: str) -> str:
    """A text's byte-level piece."""
    return "".join(CHAR[b] for b in text.encode())


def byte_level_bpe() -> Tokenizer:
    vocab = {CHAR[b]: b for b in range(256)}
    merges = []

    def merge(a, b):
        vocab[a + b] = len(vocab)
        merges.append((a, b))

    merge("Ġ", "t"), merge("h", "e"), merge("Ġt", "he")  # 256 Ġt, 257 he, 258 Ġthe
    thai = spell("ไ")
    merge(thai[0], thai[1]), merge(thai[:2], thai[2])  # 259 partial Thai (2 of 3 bytes), 260 ไ
    vocab["abc"] = len(vocab)  # 261: no merge builds it -> only as a, b, c
    merge("Ġ", "h")  # 262 Ġh
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|reserved_special_token_0|>"])  # 263, 264
    tok.add_tokens([AddedToken(" h", special=False)])  # 265: steals " h" from 262
    return tok


def wordpiece() -> Tokenizer:
    words = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "i", "n", "g", "w",
             "walk", "Walk", "##i", "##n", "##g", "##ing", "ϖ", "ไทย", "日本"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


UNIGRAM_WORDS = ["▁", "▁the", "the", "t", "h", "e", "▁t", "ไทย", "▁ไทย", "«", "▁«", "<unused0>", "日本", "ab",
                 "▁ab"]


def unigram() -> Tokenizer:
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    pieces += [(w, -3.0 - 0.1 * n) for n, w in enumerate(UNIGRAM_WORDS)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def uid(word: str) -> int:
    return 259 + UNIGRAM_WORDS.index(word)


@pytest.fixture(scope="module")
def bpe_cats():
    tok = byte_level_bpe()
    return tok, categorize(tok, rows=tok.get_vocab_size() + 3)


@pytest.fixture(scope="module")
def wp_cats():
    tok = wordpiece()
    return tok, categorize(tok, rows=tok.get_vocab_size() + 1)


@pytest.fixture(scope="module")
def uni_cats():
    tok = unigram()
    return tok, categorize(tok, rows=tok.get_vocab_size() + 2)


# ---------------------------------------------------------------------------- categories


def test_every_category_is_covered(bpe_cats, wp_cats, uni_cats):
    seen = set()
    for _, cats in (bpe_cats, wp_cats, uni_cats):
        seen |= set(cats.category)
        assert set(cats.category) <= set(cats.available)
    assert seen == set(CATEGORIES) - {"normal"}  # "normal" is the GGUF-only category


def test_byte_level_bpe(bpe_cats):
    tok, cats = bpe_cats
    assert cats.kind == "byte_level" and cats.vocab_size == 266 and cats.rows == 269
    expect = {
        256: ("ok", " t", "Latin", True), 257: ("ok", "he", "Latin", True),
        258: ("ok", " the", "Latin", True),
        259: ("undecodable", "<0xE0><0xB9>", "Thai", False), 260: ("ok", "ไ", "Thai", True),
        261: ("unreachable_multi_token", "abc", "Latin", False),
        262: ("unreachable_single_token", " h", "Latin", False),
        263: ("special", "<|endoftext|>", "none", True), 264: ("unused", "<|reserved_special_token_0|>", "none", True),
        265: ("ok", " h", "Latin", True), 266: ("padding", None, "none", None), 268: ("padding", None, "none", None),
    }
    for i, (category, text, script, trip) in expect.items():
        t = cats[i]
        assert (t.category, t.text, t.script, t.round_trip) == (category, text, script, trip), t
    assert cats[261].reencoded == (97, 98, 99) and cats[262].reencoded == (265,)
    assert cats[258].reencoded is None and cats[265].reencoded is None
    assert cats[0x41].text == "A" and cats[0xC3].text == "<0xC3>" and cats[0x20].piece == "Ġ"


def test_byte_level_byte_categories_exhaustive(bpe_cats):
    _, cats = bpe_cats
    for b in range(256):  # oracle: the UTF-8 definition, byte by byte
        if b < 0x80:
            want = "byte_ascii"
        elif b < 0xC0:
            want = "byte_utf8_continuation"
        elif b in (0xC0, 0xC1) or b >= 0xF5:
            want = "byte_invalid_utf8"
        else:
            want = "byte_utf8_lead"
        assert cats[b].category == want == byte_category(b), b
        assert cats[b].round_trip is (b < 0x80)  # a lone non-ASCII byte cannot decode to itself


def test_round_trip_matches_one_by_one_oracle(bpe_cats):
    """Byte-level BPE without prefix space: round trip == encode(decode([i])) == [i], token by token."""
    tok, cats = bpe_cats
    for t in cats:
        if t.category in ("padding", "undecodable") or t.category.startswith("byte_") and t.id >= 0x80:
            continue
        alone = tok.encode(tok.decode([t.id], skip_special_tokens=False), add_special_tokens=False).ids
        assert t.round_trip == (alone == [t.id]), t
        if not t.round_trip:
            assert t.category in ("unreachable_single_token", "unreachable_multi_token")
            assert (t.category == "unreachable_single_token") == (len(alone) == 1)


def test_wordpiece(wp_cats):
    tok, cats = wp_cats
    assert cats.kind == "wordpiece"
    by_piece = {t.piece: t for t in cats}
    assert by_piece["[unused0]"].category == by_piece["[unused1]"].category == "unused"
    assert by_piece["[unused0]"].round_trip is False  # a vocabulary entry, split by the pre-tokenizer
    assert by_piece["[CLS]"].category == "special" and by_piece["[CLS]"].round_trip
    assert by_piece["a"].category == "byte_ascii"
    assert by_piece["##ing"].category == "ok" and by_piece["##ing"].text == "##ing"  # reachable after a letter
    assert by_piece["walk"].category == "ok"
    walk = by_piece["Walk"]  # lower-cased on the way in: always "walk"
    assert walk.category == "unreachable_single_token" and walk.reencoded == (tok.token_to_id("walk"),)
    assert (by_piece["ϖ"].script, by_piece["ไทย"].script, by_piece["日本"].script) == ("Greek", "Thai", "Han")
    assert cats[len(cats) - 1].category == "padding"


def test_unigram_byte_fallback(uni_cats):
    tok, cats = uni_cats
    assert cats.kind == "byte_fallback"
    assert [cats[i].category for i in (3 + 0x41, 3 + 0x80, 3 + 0xC5, 3 + 0xE0, 3 + 0xFF)] == [
        "byte_ascii", "byte_utf8_continuation", "byte_utf8_lead", "byte_utf8_lead", "byte_invalid_utf8"]
    assert cats[3 + 0x41].text == "A" and cats[3 + 0x41].round_trip  # reachable: "A" has no piece of its own
    assert cats[3 + 0xC5].script == "Latin" and cats[3 + 0xE0].script == "Unknown"  # C5 pins Latin Extended-A
    the = cats[uid("▁the")]
    assert (the.category, the.text, the.round_trip) == ("ok", " the", True)  # shown with its leading space
    assert cats[uid("the")].category == "ok"  # mid-word: reachable after an anchor
    assert cats[uid("<unused0>")].category == "unused"
    assert cats[1].category == "special" and cats[uid("▁ไทย")].script == "Thai"
    assert [cats[i].category for i in range(cats.vocab_size, cats.rows)] == ["padding", "padding"]


def test_metaspace_pre_tokenizer():
    """The same Unigram with the newer Metaspace pre-tokenizer/decoder (prepend_scheme "first")."""
    pieces = [("<unk>", 0.0)] + [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    pieces += [(w, -3.0 - 0.1 * n) for n, w in enumerate(["▁the", "the", "«", "▁«", "he", "▁he", "ab"])]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    cats = categorize(tok, rows=264)
    assert [(cats[i].text, cats[i].category) for i in range(257, 264)] == [
        (" the", "ok"), ("the", "ok"), ("«", "ok"), (" «", "ok"), ("he", "ok"), (" he", "ok"), ("ab", "ok")]
    assert cats[0x61 + 1].round_trip  # <0x61>: "a" has no piece, so its byte is reached


def test_subset_matches_full(bpe_cats, uni_cats):
    for tok, full in (bpe_cats, uni_cats):
        ids = [0, 0xC3, 258, 259, 261, 262, full.rows - 1, 5]
        part = categorize(tok, ids, rows=full.rows)
        assert part.ids.tolist() == sorted(set(ids))
        for i in ids:
            assert part[i] == full[i]


def test_count_by_and_ids_with(bpe_cats):
    _, cats = bpe_cats
    counts = cats.count_by(field="category")
    assert sum(counts.values()) == len(cats) == cats.rows
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    assert counts["padding"] == 3 and counts["byte_ascii"] == 128
    assert cats.count_by([258, 259, 260, 266], "script") == {"Thai": 2, "Latin": 1, "none": 1}
    assert cats.count_by([256, 261, 266], "round_trip") == {"false": 1, "null": 1, "true": 1}
    assert cats.summary([259, 260, 266]) == {"category": {"ok": 1, "padding": 1, "undecodable": 1},
                                             "script": {"Thai": 2, "none": 1},
                                             "round_trip": {"false": 1, "null": 1, "true": 1}}
    assert cats.ids_with("padding").tolist() == [266, 267, 268]
    assert cats.ids_with("unused", "special").tolist() == [263, 264]
    with pytest.raises(BlackholesError, match="cannot count by"):
        cats.count_by(field="colour")
    with pytest.raises(BlackholesError, match="unknown token category"):
        cats.ids_with("dead")
    with pytest.raises(BlackholesError, match="not categorized"):
        categorize(byte_level_bpe(), [1, 2], rows=300).count_by([3])


def test_to_json_is_strict_json(bpe_cats):
    _, cats = bpe_cats
    out = json.loads(json.dumps(cats.to_json([259, 262, 266]), allow_nan=False))
    assert out["kind"] == "byte_level" and out["vocab_size"] == 266
    assert [t["category"] for t in out["tokens"]] == ["undecodable", "unreachable_single_token", "padding"]
    assert out["tokens"][1]["reencoded"] == [265] and out["tokens"][2]["text"] is None


def test_from_a_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    byte_level_bpe().save(str(path))
    assert categorize(tmp_path, rows=300)[263].category == "special"  # the folder holding it
    assert categorize(path, [259], rows=266)[259].category == "undecodable"


# ---------------------------------------------------------------------------- bad input


def test_bad_input(tmp_path):
    tok = byte_level_bpe()
    with pytest.raises(BlackholesError, match="the tokenizer has 266 tokens but the matrix has only 200 rows"):
        categorize(tok, rows=200)
    with pytest.raises(BlackholesError, match="out of range"):
        categorize(tok, [5, 300], rows=300)
    for text in ("{}", "not json at all", '{"model": {"type": "Nope"}}'):
        bad = tmp_path / "tokenizer.json"
        bad.write_text(text)
        with pytest.raises(BlackholesError) as err:
            categorize(bad, rows=10)
        assert "\n" not in str(err.value) and "cannot read tokenizer" in str(err.value)
    with pytest.raises(BlackholesError, match="no tokenizer.json"):
        categorize(tmp_path / "missing", rows=10)
    with pytest.raises(BlackholesError, match="expected a tokenizers.Tokenizer"):
        categorize(object(), rows=10)


# ---------------------------------------------------------------------------- GGUF vocabularies


def test_gguf_vocabulary_byte_level():
    pieces = ["<|endoftext|>", spell(" the"), spell("ไ")[:2], CHAR[0xC3], "!", "<|reserved_special_token_2|>",
              "<think>", CHAR[0x80]]
    types = ["control", "normal", "normal", "normal", "normal", "control", "user_defined", "normal"]
    v = Vocabulary(pieces, [None] * len(pieces), types, model="gpt2")
    cats = categorize_vocabulary(v, rows=10)
    assert [t.category for t in cats] == ["special", "normal", "undecodable", "byte_utf8_lead", "byte_ascii",
                                          "unused", "normal", "byte_utf8_continuation", "padding", "padding"]
    assert cats[1].text == " the" and cats[1].script == "Latin" and cats[1].round_trip is None
    assert cats[2].script == "Thai" and cats[2].round_trip is False and cats[6].text == "<think>"
    assert cats.available == GGUF_CATEGORIES and "ok" not in cats.available
    assert cats.count_by(field="round_trip") == {"null": 9, "false": 1}


def test_gguf_vocabulary_sentencepiece():
    pieces = ["<unk>", "<s>", "<0x0A>", "<0xE0>", "▁the", "<unused3>", "日本"]
    types = ["unknown", "control", "byte", "byte", "normal", "unused", "normal"]
    text = [None, None, "\n", None, " the", None, "日本"]
    cats = categorize_vocabulary(Vocabulary(pieces, text, types, model="llama"), rows=7)
    assert [t.category for t in cats] == ["normal", "special", "byte_ascii", "byte_utf8_lead", "normal", "unused",
                                          "normal"]
    assert (cats[4].text, cats[6].script, cats[3].text) == (" the", "Han", "<0xE0>")
    no_types = categorize_vocabulary(Vocabulary(["[unused9]", "<0x41>"], [None, "A"], None, None), rows=2)
    assert [t.category for t in no_types] == ["unused", "byte_ascii"]
    with pytest.raises(BlackholesError, match="7 tokens but the matrix has only 6 rows"):
        categorize_vocabulary(Vocabulary(pieces, text, types, model="llama"), rows=6)


# ---------------------------------------------------------------------------- scripts and bytes


def test_script_of():
    assert script_of("ไทย") == "Thai" and script_of("日本") == "Han" and script_of(" the") == "Latin"
    assert script_of("Привет!") == "Cyrillic" and script_of("ひらがな") == "Hiragana"
    assert script_of("123 ,.") == "Common" and script_of("\u0301") == "Inherited"
    assert script_of("日本語です") == "mixed" and script_of("abcПри") == "mixed"
    assert script_of("") == script_of(None) == "none"
    assert script_of("e\u0301") == "Latin"  # a combining mark does not make it mixed


def test_partial_utf8_scripts():
    assert script_of_bytes("ไ".encode()[:2]) == "Thai"  # E0 B8 -> U+0E00..U+0E3F
    assert script_of_bytes("Ж".encode()[:1]) == "Cyrillic"  # D0 -> U+0400..U+043F
    assert script_of_bytes("中".encode()[:1]) == "Han"  # E4 -> U+4000..U+4FFF: all Han
    assert script_of_bytes(b"\xe0") == "Unknown"  # U+0800..U+0FFF: many scripts
    assert script_of_bytes(b"\x80\x81") == "Unknown" and script_of_bytes(b"") == "none"
    assert script_of_bytes("ok".encode() + "ไ".encode()[:2]) == "mixed"  # Latin, then the start of a Thai letter
    assert script_of_bytes("😀".encode()[:2]) == "Common"  # F0 9F: emoji and symbols
    assert script_of_bytes("ไ".encode()[1:]) == "Unknown"  # the end of a character says nothing


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=12))
def test_readable_and_script_of_any_bytes(data):
    text = readable_bytes(data)
    try:
        assert text == data.decode("utf-8")
    except UnicodeDecodeError:
        assert "<0x" in text
    assert isinstance(script_of_bytes(data), str) and script_of_bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.characters(min_codepoint=0x80, exclude_categories=("Cs", "Cn", "Co")))
def test_partial_character_script_oracle(ch):
    """All but the last byte pins 64 code points; brute force: the answer is a script one of
    them has (or "Unknown"), and exactly theirs when all the assigned ones agree."""
    head = ch.encode()[:-1]
    scripts = set()
    for last in range(0x80, 0xC0):
        try:
            c = (head + bytes([last])).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if script_of(c) != "Unknown":
            scripts.add(script_of(c))
    got = script_of_bytes(head)
    assert got == "Unknown" or got in scripts
    if len(scripts) == 1:
        assert got == scripts.pop()


def test_byte_level_alphabet_and_names():
    assert sorted(byte_level_alphabet().values()) == list(range(256))
    assert set(byte_level_alphabet()) == set(pre_tokenizers.ByteLevel.alphabet())  # the library's own alphabet
    assert byte_level_bytes(spell("ไทย ok")) == "ไทย ok".encode() and byte_level_bytes("a b") is None
    for name in ("[unused0]", "<unused12>", "<|reserved_special_token_250|>", "<|placeholder3|>",
                 "<｜place▁holder▁no▁7｜>"):
        assert is_unused_name(name), name
    for name in ("<s>", "[CLS]", "<|endoftext|>", "unused", "<|im_start|>", "<0x00>"):
        assert not is_unused_name(name), name

