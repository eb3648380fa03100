"""Who the tokens are: each row's token, its category, and its Unicode script.

For every row id of an embedding matrix: the vocabulary piece, a readable text, a
category (one stable snake_case string, below), whether the token survives a
decode -> re-encode round trip, and the Unicode script of its text. The categories
follow "Fishing for Magikarp" (Land & Bartolo 2024), whose names researchers know
(their spelling in brackets); the byte categories split their single-byte tokens.

======================== ============================================================ ========== ========
category                 meaning                                                      tokenizer  GGUF
                                                                                      .json      vocab
======================== ============================================================ ========== ========
ok                       its text re-encodes to exactly this token [OK]               yes        no
unreachable_single_token its text re-encodes as one *other* token                     yes        no
                         [UNREACHABLE_SINGLE_TOKEN]
unreachable_multi_token  its text re-encodes only as several tokens                   yes        no
                         [UNREACHABLE_MULTI_TOKEN]
normal                   an ordinary token whose round trip cannot be checked         no         yes
                         (a GGUF vocabulary carries no encoder)
undecodable              partial UTF-8: its bytes are not a whole UTF-8 string        yes        yes
                         [UNDECODEABLE]
special                  a special / control token (added token marked special;       yes        yes
                         GGUF type "control")
unused                   a reserved slot: GGUF type "unused", or a marker named       yes        yes
                         ``[unused3]``, ``<unused3>``, ``<|reserved_special_token_3|>``,
                         ``<|placeholder3|>``
byte_ascii               a token of exactly one byte, 0x00-0x7F                       yes        yes
byte_utf8_lead           one byte 0xC2-0xF4: the start of a multi-byte character      yes        yes
byte_utf8_continuation   one byte 0x80-0xBF: the middle or end of a character         yes        yes
byte_invalid_utf8        one byte 0xC0, 0xC1 or 0xF5-0xFF: never valid in UTF-8       yes        yes
padding                  a matrix row the tokenizer has no token for (beyond its      yes        yes
                         vocabulary, which models round up to a multiple of 64/128)
======================== ============================================================ ========== ========

The first matching row wins, in this order: padding, unused, special, byte_*,
undecodable, then the round-trip categories. A "one-byte token" is a byte-fallback
piece ``<0xNN>``, a single character of a byte-level (GPT-2 style) vocabulary, or a
piece whose text is one ASCII character (as Magikarp counts them).

``round_trip`` (every category but padding): True when the decoded text re-encodes
to exactly ``[id]`` -- on its own, or right after an anchor text (``«``, or for
WordPiece a letter that starts no longer piece) whose tokens end where the text
begins; this is Magikarp's trick for tokenizers that add or strip a leading space,
and it lets continuation pieces (``##ing``, SentencePiece pieces without ``▁``)
count as reachable. Undecodable tokens never round-trip (decoding loses bytes).
None where it cannot be checked (padding, GGUF vocabularies).

``script`` is the Unicode script of the token's text, from ``fontTools.unicodedata``
(the Unicode Character Database), by its full name: "Latin", "Han", "Thai",
"Cyrillic", ... Characters of the Common and Inherited scripts (spaces, digits,
punctuation, emoji; combining marks) do not count when others are present, so
" the" is "Latin"; a text of only such characters is "Common" (or "Inherited").
Several scripts in one token: "mixed". Partial UTF-8 is read from its bytes: a
trailing incomplete character (one or two bytes short) counts as the script of at
least 90% of the assigned characters it could complete to ("Thai" for ``E0 B8``,
"Common" for the emoji lead ``F0 9F``), else "Unknown". Continuation bytes at a
token's start say nothing about their character and are skipped (a token of nothing
else is "Unknown"). "none": no text to classify (padding, special, unused, empty).

>>> from tokenizers import Tokenizer, models, pre_tokenizers, decoders
>>> alphabet = pre_tokenizers.ByteLevel.alphabet()
>>> tok = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
>>> tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
>>> tok.decoder = decoders.ByteLevel()
>>> cats = categorize(tok, rows=260)
>>> cats.count_by(field="category")
{'byte_ascii': 128, 'byte_utf8_continuation': 64, 'byte_utf8_lead': 51, 'byte_invalid_utf8': 13, 'padding': 4}
>>> script_of("ไทย"), script_of(" the"), script_of("日本語です"), script_of("123"), script_of("")
('Thai', 'Latin', 'mixed', 'Common', 'none')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from blackholes.analysis.scripts import (
    byte_category, byte_level_bytes, is_unused_name, readable_bytes, script_of, script_of_bytes,
)
from blackholes.errors import BlackholesError

CATEGORIES = (
    "ok", "unreachable_single_token", "unreachable_multi_token", "normal", "undecodable", "special", "unused",
    "byte_ascii", "byte_utf8_lead", "byte_utf8_continuation", "byte_invalid_utf8", "padding",
)
BYTE_CATEGORIES = ("byte_ascii", "byte_utf8_lead", "byte_utf8_continuation", "byte_invalid_utf8")
ROUND_TRIP_CATEGORIES = ("ok", "unreachable_single_token", "unreachable_multi_token")
# What a GGUF vocabulary can tell (no encoder, so no round trip).
GGUF_CATEGORIES = tuple(c for c in CATEGORIES if c not in ROUND_TRIP_CATEGORIES)
TOKENIZER_CATEGORIES = tuple(c for c in CATEGORIES if c != "normal")
FIELDS = ("category", "script", "round_trip")

ANCHORS = ("«", "»")  # Magikarp's prefixes: rarely merged with what follows
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class TokenInfo:
    """One row: its token, category, script and round trip.

    >>> TokenInfo(5, "Ġthe", " the", "ok", "Latin", True).to_json()["text"]
    ' the'
    """

    id: int
    piece: str | None  # the vocabulary entry (None: padding row)
    text: str | None  # readable: decoded text, stray bytes written <0xNN> (None: padding row)
    category: str
    script: str
    round_trip: bool | None
    reencoded: tuple[int, ...] | None = None  # what its text re-encodes to, when that is not [id]

    def to_json(self) -> dict:
        out = {"id": self.id, "piece": self.piece, "text": self.text, "category": self.category,
               "script": self.script, "round_trip": self.round_trip}
        if self.reencoded is not None:
            out["reencoded"] = list(self.reencoded)
        return out


@dataclass
class Categories:
    """Per-row token information for the rows ``ids`` of a matrix with ``rows`` rows.

    Index it by row id (``cats[151643].category``), iterate it (TokenInfo in id
    order), count it (:meth:`count_by`), select from it (:meth:`ids_with`).

    >>> cats = categorize("tokenizer.json", rows=151936)            # doctest: +SKIP
    >>> cats[151643].category, cats.count_by(hole_ids, "script")    # doctest: +SKIP
    ('special', {'Thai': 40, 'Han': 12, 'Latin': 3})
    """

    ids: np.ndarray  # int64, sorted
    pieces: list[str | None]
    text: list[str | None]
    category: list[str]
    script: list[str]
    round_trip: list[bool | None]
    reencoded: dict[int, tuple[int, ...]]
    vocab_size: int  # ids below this have a token (except gaps); rows at or above are padding
    rows: int
    source: str  # "tokenizer" or "gguf"
    kind: str  # "byte_level", "byte_fallback", "wordpiece", "text"
    available: tuple[str, ...]  # the categories this source can tell apart
    _index: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {int(i): k for k, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, token_id) -> bool:
        return int(token_id) in self._index

    def __getitem__(self, token_id) -> TokenInfo:
        k = self._index.get(int(token_id))
        if k is None:
            raise KeyError(f"row {token_id} was not categorized")
        return TokenInfo(int(self.ids[k]), self.pieces[k], self.text[k], self.category[k], self.script[k],
                         self.round_trip[k], self.reencoded.get(int(self.ids[k])))

    def __iter__(self) -> Iterator[TokenInfo]:
        return (self[i] for i in self.ids)

    def _positions(self, ids) -> list[int]:
        if ids is None:
            return list(range(len(self.ids)))
        ids = [int(i) for i in ids]
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise BlackholesError(f"rows {missing[:5]} were not categorized (categorize them first)")
        return [self._index[i] for i in ids]

    def count_by(self, ids: Iterable[int] | None = None, field: str = "category") -> dict[str, int]:
        """How many of ``ids`` (all when None) have each value of ``field``, most common first.

        ``field`` is "category", "script" or "round_trip" (counted as "true" / "false" / "null").

        >>> cats.count_by([5, 6, 151935], "category")    # doctest: +SKIP
        {'ok': 2, 'padding': 1}
        """
        if field not in FIELDS:
            raise BlackholesError(f"cannot count by {field!r}; choose one of {', '.join(FIELDS)}")
        values = getattr(self, field)
        counts: dict[str, int] = {}
        for k in self._positions(ids):
            v = values[k]
            key = {True: "true", False: "false", None: "null"}[v] if field == "round_trip" else v
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self, ids: Iterable[int] | None = None) -> dict[str, dict[str, int]]:
        """One hole's (or cluster's) summary: counts of ``ids`` by category, script and round trip.

        >>> cats.summary(hole.token_ids)["script"]    # doctest: +SKIP
        {'Thai': 40, 'Han': 12}
        """
        ids = None if ids is None else [int(i) for i in ids]
        return {f: self.count_by(ids, f) for f in FIELDS}

    def ids_with(self, *categories: str) -> np.ndarray:
        """Row ids whose category is one of ``categories`` (sorted int64).

        >>> cats.ids_with("unused", "padding")    # doctest: +SKIP
        array([151669, ..., 151935])
        """
        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            raise BlackholesError(f"unknown token category {unknown[0]!r}; categories: {', '.join(CATEGORIES)}")
        wanted = set(categories)
        return np.array([i for i, c in zip(self.ids, self.category) if c in wanted], dtype=np.int64)

    def to_json(self, ids: Iterable[int] | None = None) -> dict:
        """The source, what it can tell, and one entry per token of ``ids`` (all when None)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "rows": self.rows,
            "categories_available": list(self.available),
            "tokens": [self[int(self.ids[k])].to_json() for k in self._positions(ids)],
        }


# ------------------------------------------------------------------------------ shared steps


def _check_rows(n_tokens: int, rows: int, ids) -> np.ndarray:
    """Validated, sorted, unique row ids (all rows when ``ids`` is None)."""
    if rows < 0:
        raise BlackholesError(f"rows must be a row count, got {rows}")
    if n_tokens > rows:
        raise BlackholesError(
            f"the tokenizer has {n_tokens:,} tokens but the matrix has only {rows:,} rows; "
            "is it this model's tokenizer?"
        )
    if ids is None:
        return np.arange(rows, dtype=np.int64)
    ids = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    if len(ids) and (ids[0] < 0 or ids[-1] >= rows):
        bad = int(ids[0] if ids[0] < 0 else ids[-1])
        raise BlackholesError(f"row id {bad} is out of range: the matrix has {rows:,} rows (0-{rows - 1:,})")
    return ids


def _utf8(data: bytes | None) -> str | None:
    """``data`` decoded, or None when it is not (whole) UTF-8."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _static_category(piece: str | None, data: bytes | None, special: bool, unused: bool,
                     text: str | None = None) -> str | None:
    """Every category that needs no encoder; None: an ordinary token (decided by its round trip).
    ``text``: ``data`` decoded (None when it is not UTF-8)."""
    if piece is None:
        return "padding"
    if unused or is_unused_name(piece):
        return "unused"
    if special:
        return "special"
    if data is not None and len(data) == 1:
        return byte_category(data[0])
    if data is not None and text is None:
        return "undecodable"
    return None


def _script(category: str, data: bytes | None, utf8: str | None, text: str | None) -> str:
    """The script of the readable ``text``, or of the bytes ``data`` when they are not UTF-8."""
    if category in ("padding", "special", "unused"):
        return "none"
    if data is not None and utf8 is None:
        return script_of_bytes(data)  # partial UTF-8: read the incomplete character too
    return script_of(text)


# ------------------------------------------------------------------------------ tokenizers


def _component_types(tok) -> set[str]:
    """Type names of the tokenizer's normalizer, pre-tokenizer and decoder, nested ones included."""
    import json

    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for part in (tok.normalizer, tok.pre_tokenizer, tok.decoder):
        if part is not None:
            try:
                walk(json.loads(part.__getstate__()))
            except Exception:  # a custom Python component has no JSON state
                pass
    return found


def _token_bytes(piece: str, added: bool, byte_level: bool, text_of_piece) -> bytes | None:
    """The exact bytes a token stands for, when the vocabulary spells them out."""
    m = _BYTE_PIECE.match(piece) if len(piece) == 6 and piece[:3] == "<0x" else None
    if m and not added:
        return bytes([int(m.group(1), 16)])
    if added:
        return None
    if byte_level:
        return byte_level_bytes(piece)  # None: not a byte-level piece after all (a misconfigured vocabulary)
    text = text_of_piece(piece)
    if len(text) == 1 and ord(text) < 0x80:  # one ASCII character: a one-byte token
        return text.encode()
    return None


def _letter_anchor(pieces: list[str | None], prefix: str) -> str | None:
    """A letter whose piece starts no longer word-start piece: after it, WordPiece must
    begin a continuation (``##...``), so continuation pieces can be tested."""
    import unicodedata

    starts = {p[0] for p in pieces if p and len(p) > 1 and not p.startswith(prefix)}
    letters = sorted(p for p in pieces if p and len(p) == 1 and p.isalpha() and p not in starts
                     and unicodedata.east_asian_width(p) not in "WF")  # CJK is split off by BERT's normalizer
    return letters[0] if letters else None


def _encode_ids(tok, texts: list[str]) -> list[list[int]]:
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: faster (tokenizers >= 0.20)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _after_anchor(tok, anchor: str, todo: list[int]) -> dict:
    """Decode ``anchor + token`` for each token of ``todo``: ``{"ids": the anchor's own
    token ids, "cut": where its text ends, "texts": {token id: the whole text, or None
    where it does not start with the anchor's text}}``."""
    a_ids = tok.encode(anchor, add_special_tokens=False).ids
    head = tok.decode(a_ids, skip_special_tokens=False) if a_ids else ""
    if not head or not todo:
        return {"ids": a_ids, "cut": 0, "texts": dict.fromkeys(todo)}
    full = tok.decode_batch([a_ids + [t] for t in todo], skip_special_tokens=False)
    return {"ids": a_ids, "cut": len(head), "texts": {t: f if f.startswith(head) else None for t, f in zip(todo, full)}}


def _anchored(tok, decoded: dict, todo: list[int]) -> list[list[int] | None]:
    """Re-encode ``anchor + token`` texts (from :func:`_after_anchor`): per token, the ids of
    the tokens that begin where the anchor's text ends, or None when a token straddles that
    boundary (the anchor merged with the text: this anchor cannot tell)."""
    cut = decoded["cut"]
    texts = [decoded["texts"].get(t) for t in todo]
    live = [k for k, t in enumerate(texts) if t is not None]
    out: list[list[int] | None] = [None] * len(todo)
    for k, enc in zip(live, tok.encode_batch([texts[k] for k in live], add_special_tokens=False)):
        tail, clean = [], True
        for i, (s, e) in zip(enc.ids, enc.offsets):
            if s >= cut:
                tail.append(i)
            elif e > cut:
                clean = False
                break
        if clean:
            out[k] = tail
    return out


def _better(a: list[int], b: list[int] | None) -> bool:
    """Whether re-encoding ``a`` tells more than ``b``: one other token, else the fewest tokens."""
    return b is None or (len(a) != 1, len(a)) < (len(b) != 1, len(b))


def _round_trips(tok, ids: list[int], texts: list[str], attempts: list[str | None], known: dict | None = None):
    """Per token: whether its text re-encodes to it, and else the most telling re-encoding.

    ``attempts`` in order, each on the tokens still failing: None = the text on its own,
    a string = after that anchor. ``known``: the first anchor's decodings, when made already.
    """
    ok = [False] * len(ids)
    best: list[list[int] | None] = [None] * len(ids)
    for attempt in attempts:
        todo = [k for k in range(len(ids)) if not ok[k]]
        if not todo:
            break
        if attempt is None:
            tails = _encode_ids(tok, [texts[k] for k in todo])
        else:
            decoded = known if known is not None and known["anchor"] == attempt else None
            decoded = decoded or _after_anchor(tok, attempt, [ids[k] for k in todo])
            tails = _anchored(tok, decoded, [ids[k] for k in todo])
        for k, tail in zip(todo, tails):
            if tail is None:
                continue
            if tail == [ids[k]]:
                ok[k], best[k] = True, None
            elif _better(tail, best[k]):
                best[k] = tail
    return ok, best


def _prefix_mode(tok) -> bool:
    """Whether the tokenizer puts a space marker before a text's first word (SentencePiece
    style, or byte-level with ``add_prefix_space``): then a token decoded alone loses its
    leading space, and is shown as decoded after an anchor instead."""
    text = "a"
    try:
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        if tok.pre_tokenizer is not None:
            parts = tok.pre_tokenizer.pre_tokenize_str(text)
            text = parts[0][0] if parts else text
    except Exception:  # a custom Python component: fall back to what the encoder makes of it
        tokens = tok.encode("a", add_special_tokens=False).tokens
        text = tokens[0] if tokens else "a"
    return text[:1] in ("▁", "Ġ", " ")


def _lossy(decoded: str, piece: str, data: bytes | None) -> bool:
    """Decoding replaced bytes by U+FFFD (it was not in the token itself)."""
    if "\ufffd" not in decoded or "\ufffd" in piece:
        return False
    return data is None or b"\xef\xbf\xbd" not in data


def categorize(tokenizer, ids: Iterable[int] | None = None, *, rows: int) -> Categories:
    """Categorize rows ``ids`` (all ``rows`` when None) with a ``tokenizers.Tokenizer``.

    ``tokenizer`` is a Tokenizer, or the path of ``tokenizer.json`` (or its folder).
    ``rows`` is the matrix's row count: ids the tokenizer has no token for are padding.
    Decoding and re-encoding run in batches in the tokenizers library (Rust).

    >>> cats = categorize("Qwen3-4B/tokenizer.json", rows=151936)   # doctest: +SKIP
    >>> cats[151935].category, cats[151643].category                # doctest: +SKIP
    ('padding', 'special')
    """
    tok = _as_tokenizer(tokenizer)
    n_tokens = _id_space(tok)
    ids = _check_rows(n_tokens, rows, ids)
    types = _component_types(tok)
    byte_level = "ByteLevel" in types
    prefix = getattr(tok.model, "continuing_subword_prefix", None) or None
    pieces, data, utf8, static = _pieces(tok, ids, n_tokens, byte_level, spaced=bool(types & _SPACE_MARKERS))

    live = [k for k, p in enumerate(pieces) if p is not None]
    decoded: list[str | None] = [None] * len(ids)
    for k, d in zip(live, tok.decode_batch([[int(ids[k])] for k in live], skip_special_tokens=False)):
        decoded[k] = d
    alone = list(decoded)  # each token decoded on its own: the text the plain round trip re-encodes
    prefix_mode = bool(live) and _prefix_mode(tok)
    known = _shown_after_anchor(tok, ANCHORS[0], ids, live, static, decoded) if prefix_mode else None
    checked = [k for k in live if static[k] != "undecodable" and not _lossy(alone[k], pieces[k], data[k])]
    ok, best = _round_trips(tok, [int(ids[k]) for k in checked], [alone[k] for k in checked],
                            _attempts(tok, prefix_mode, prefix), known)
    trip: list[bool | None] = [None] * len(ids)
    reencoded: dict[int, tuple[int, ...]] = {}
    for k, good, b in zip(checked, ok, best):
        trip[k] = good
        if b is not None:
            reencoded[int(ids[k])] = tuple(int(t) for t in b)
    kind = _kind(byte_level, prefix, "ByteFallback" in types or tok.token_to_id("<0x00>") is not None)
    return _assemble(ids, pieces, data, utf8, static, decoded, trip, reencoded, vocab_size=n_tokens, rows=rows,
                     source="tokenizer", kind=kind, available=TOKENIZER_CATEGORIES)


_SPACE_MARKERS = {"Metaspace", "Prepend", "Replace"}  # components by which "▁" stands for a space


def _pieces(tok, ids: np.ndarray, n_tokens: int, byte_level: bool, spaced: bool):
    """Per row: its piece (None: padding), the bytes it spells (when known), those bytes
    decoded (None: not UTF-8), and its category when no encoder is needed to tell it."""
    added = tok.get_added_tokens_decoder()
    text_of_piece = (lambda p: p.replace("▁", " ")) if spaced else (lambda p: p)
    pieces = [tok.id_to_token(int(i)) if i < n_tokens else None for i in ids]
    data, utf8, static = [], [], []
    for i, p in zip(ids, pieces):
        a = added.get(int(i))
        d = None if p is None else _token_bytes(p, a is not None, byte_level, text_of_piece)
        t = _utf8(d)
        data.append(d)
        utf8.append(t)
        static.append(_static_category(p, d, bool(a is not None and a.special), False, t))
    return pieces, data, utf8, static


def _attempts(tok, prefix_mode: bool, prefix: str | None) -> list[str | None]:
    """The round-trip attempts, in order: the text alone (None), then after each anchor --
    where a token's context matters: a leading space the tokenizer adds or strips
    (SentencePiece style), or WordPiece continuation pieces (after a letter anchor)."""
    anchors: list[str] = []
    if prefix:
        letter = _letter_anchor(list(tok.get_vocab(with_added_tokens=True)), prefix)
        anchors += [letter] if letter else []
    if prefix or prefix_mode:
        anchors += list(ANCHORS)
    return [None, *anchors]


def _shown_after_anchor(tok, anchor: str, ids, live: list[int], static, decoded) -> dict:
    """Decode every token after ``anchor`` (for a tokenizer that strips a text's leading
    space): ordinary tokens are shown that way, keeping their own leading space, and the
    decodings are returned for the anchored round trip."""
    known = _after_anchor(tok, anchor, [int(ids[k]) for k in live])
    cut = known["cut"]
    for k in live:
        t = known["texts"][int(ids[k])]
        if t is not None and len(t) > cut and static[k] not in ("special", "unused"):
            decoded[k] = t[cut:]
    return {**known, "anchor": anchor}


def _kind(byte_level: bool, prefix: str | None, byte_fallback: bool) -> str:
    if byte_level:
        return "byte_level"
    if byte_fallback:
        return "byte_fallback"
    if prefix:
        return "wordpiece"
    return "text"


def _assemble(ids, pieces, data, utf8, static, decoded, trip, reencoded, **info) -> Categories:
    """Put the per-token decisions together into :class:`Categories`."""
    category, text, script = [], [], []
    for k in range(len(ids)):
        cat = static[k]
        if cat is None:
            if trip[k] is None:  # decoding replaced bytes by U+FFFD: the text is lossy
                cat = "undecodable"
            elif trip[k]:
                cat = "ok"
            elif len(reencoded.get(int(ids[k]), ())) == 1:
                cat = "unreachable_single_token"
            else:
                cat = "unreachable_multi_token"
        if cat != "padding" and trip[k] is None:
            trip[k] = False  # undecodable bytes or a lossy decoding: the round trip cannot come back
        category.append(cat)
        text.append(_readable(pieces[k], data[k], utf8[k], decoded[k]))
        script.append(_script(cat, data[k], utf8[k], text[k]))
    return Categories(ids, pieces, text, category, script, trip, reencoded, **info)


def _readable(piece: str | None, data: bytes | None, utf8: str | None, decoded: str | None) -> str | None:
    if piece is None:
        return None
    if utf8 is not None:
        return utf8
    if data is not None:
        return readable_bytes(data)
    return decoded if decoded else piece


def _id_space(tok) -> int:
    """One more than the largest token id (the vocabulary size, unless its ids have gaps)."""
    size = tok.get_vocab_size(with_added_tokens=True)
    if size == 0 or (tok.id_to_token(size - 1) is not None and tok.id_to_token(size) is None):
        return size
    return max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1


def _as_tokenizer(tokenizer):
    if isinstance(tokenizer, (str, os.PathLike)):
        from blackholes.sources.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    if not all(hasattr(tokenizer, a) for a in ("decode_batch", "encode_batch", "id_to_token", "get_vocab")):
        raise BlackholesError(
            f"expected a tokenizers.Tokenizer or a tokenizer.json path, got {type(tokenizer).__name__}")
    return tokenizer


# ------------------------------------------------------------------------------ GGUF vocabularies


def categorize_vocabulary(vocab, ids: Iterable[int] | None = None, *, rows: int) -> Categories:
    """Categorize rows with the vocabulary a GGUF file carries (:class:`blackholes.sources.matrix.Vocabulary`).

    Without an encoder no round trip can be checked: ordinary tokens are "normal"
    and ``round_trip`` is None; every other category (see ``GGUF_CATEGORIES``) comes
    from the token types and the pieces' bytes. A byte-level vocabulary (model
    "gpt2") spells each piece's bytes, so partial UTF-8 is found exactly.

    >>> from blackholes.sources.matrix import Vocabulary
    >>> v = Vocabulary(["<s>", "Ġthe", "à¸", "<0x0A>"], [None, " the", None, "\\n"],
    ...                ["control", "normal", "normal", "byte"], "gpt2")
    >>> [t.category for t in categorize_vocabulary(v, rows=5)]
    ['special', 'normal', 'undecodable', 'byte_ascii', 'padding']
    """
    types = list(vocab.types) if vocab.types is not None else [None] * vocab.size
    ids = _check_rows(vocab.size, rows, ids)
    byte_level = vocab.model == "gpt2"
    pieces, text, category, script, trip = [], [], [], [], []
    for i in ids:
        i = int(i)
        piece = vocab.pieces[i] if i < vocab.size else None
        kind = types[i] if i < vocab.size else None
        given = vocab.text[i] if i < min(vocab.size, len(vocab.text)) else None
        d = _gguf_bytes(piece, kind, byte_level)
        t = _utf8(d)
        cat = _static_category(piece, d, kind == "control", kind == "unused", t) or "normal"
        shown = None if piece is None else _readable(piece, d, t, given or piece.replace("▁", " "))
        pieces.append(piece)
        text.append(shown)
        category.append(cat)
        script.append(_script(cat, d, t, shown))
        trip.append(None if cat in ("padding", "normal") else False if cat == "undecodable" else None)
    return Categories(ids, pieces, text, category, script, trip, {}, vocab_size=vocab.size, rows=rows,
                      source="gguf", kind="byte_level" if byte_level else "text", available=GGUF_CATEGORIES)


def _gguf_bytes(piece: str | None, kind: str | None, byte_level: bool) -> bytes | None:
    """The bytes a GGUF piece spells, when it spells them: byte tokens ``<0xNN>`` and, in a
    byte-level vocabulary, every ordinary piece (added and control tokens are plain text)."""
    if piece is None or kind in ("control", "unused", "user_defined"):
        return None
    m = _BYTE_PIECE.match(piece) if piece.startswith("<0x") else None
    if m and kind in (None, "byte"):
        return bytes([int(m.group(1), 16)])
    return _token_bytes(piece, False, byte_level, lambda p: p.replace("▁", " "))
