"""The vocabulary a GGUF file carries (``tokenizer.ggml.*`` metadata): token pieces, their text, their types.

Every value is checked to have the type llama.cpp writes (a string array of tokens, an integer
array of token types as long as the tokens, a string model name): anything else is refused with
one line, never turned into a crash deep inside an analysis.

>>> v = gguf_vocabulary({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["Ġa", "b"]})
>>> list(v.text)
[' a', 'b']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.sources.matrix import Vocabulary

TOKENS_KEY = "tokenizer.ggml.tokens"
TYPES_KEY = "tokenizer.ggml.token_type"
MODEL_KEY = "tokenizer.ggml.model"

# llama.cpp's token types (gguf.TokenType), as the JSON names them
TOKEN_TYPES = {0: "undefined", 1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}


class StringArray(Sequence):
    """A GGUF string array, kept as its bytes and decoded one string at a time on access.

    Decoding 150k tokens up front costs more than scanning their embedding matrix.
    ``starts[i] - base`` is where string i's 8-byte length field lies in ``data``.

    >>> a = StringArray(b"\\x02" + bytes(7) + b"hi" + b"\\x00" + bytes(7), [0, 10])
    >>> len(a), a[0], a[-1], list(a), a[:1]
    (2, 'hi', '', ['hi', ''], ['hi'])
    """

    def __init__(self, data: bytes, starts, base: int = 0):
        self.data, self.starts, self.base = data, starts, base

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, i: int) -> bytes:
        i = range(len(self.starts))[i]  # negative indices, IndexError
        stop = self.starts[i + 1] - self.base if i + 1 < len(self.starts) else len(self.data)
        return self.data[self.starts[i] - self.base + 8 : stop]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return self.raw(i).decode("utf-8", "replace")

    def __iter__(self):
        for i in range(len(self.starts)):
            yield self.raw(i).decode("utf-8", "replace")

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"


class Mapped(Sequence):
    """``fn(i)`` for ``i`` in ``range(n)``, computed on access (token text and type names)."""

    def __init__(self, n: int, fn):
        self.n, self.fn = n, fn

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.fn(j) for j in range(self.n)[i]]
        return self.fn(range(self.n)[i])

    def __iter__(self):
        return map(self.fn, range(self.n))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Mapped({self.n} items)"


# ---------------------------------------------------------------------------- vocabulary


def gguf_vocabulary(metadata: dict, where: str = "the GGUF file") -> Vocabulary | None:
    """Token pieces, their text and types from ``tokenizer.ggml.*`` metadata (None without tokens).

    ``pieces``, ``text`` and ``types`` are sequences decoded on access (``list()`` them
    for JSON): a scan needs the strings of a few thousand rows, not of every token.
    A value of another type than llama.cpp writes is refused in one line naming ``where``.

    >>> v = gguf_vocabulary({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["Ġthe", "<s>"],
    ...                      "tokenizer.ggml.token_type": np.array([1, 3])})
    >>> list(v.pieces), list(v.text), list(v.types)
    (['Ġthe', '<s>'], [' the', '<s>'], ['normal', 'control'])
    >>> gguf_vocabulary({"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.token_type": np.array([np.nan], np.float32)})
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: corrupt GGUF metadata in the GGUF file: tokenizer.ggml.token_type is an array of float32, not of integer token types
    """
    if TOKENS_KEY not in metadata:
        return None
    pieces = metadata[TOKENS_KEY]
    if not _strings(pieces):
        raise _bad(where, f"{TOKENS_KEY} is {_kind(pieces)}, not an array of strings")
    model = metadata.get(MODEL_KEY)
    if model is not None and not isinstance(model, str):
        raise _bad(where, f"{MODEL_KEY} is {_kind(model)}, not a string")
    ids = metadata.get(TYPES_KEY)
    if ids is not None:
        if not (isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype.kind in "iu"):
            raise _bad(where, f"{TYPES_KEY} is {_kind(ids)}, not of integer token types")
    has_types = ids is not None and len(ids) == len(pieces)  # types of another vocabulary: not used
    types = Mapped(len(pieces), lambda i: _type_name(int(ids[i]))) if has_types else None
    decode = _DECODERS.get(model, _raw_text)
    text = Mapped(len(pieces), lambda i: decode(pieces[i], types[i] if types is not None else "normal"))
    return Vocabulary(pieces, text, types, model)


def _strings(value) -> bool:
    """A sequence of strings: the reader's lazily decoded string array, or a list of str."""
    if isinstance(value, (str, bytes, np.ndarray)) or not isinstance(value, Sequence):
        return False
    return isinstance(value, StringArray) or all(isinstance(v, str) for v in value)


def _kind(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    if isinstance(value, list):
        return "an array of arrays" if value and isinstance(value[0], list) else "an array"
    return f"a {type(value).__name__}"


def _bad(where: str, why: str) -> BlackholesError:
    return BlackholesError(f"corrupt GGUF metadata in {where}: {why}")


def _type_name(type_id: int) -> str:
    return TOKEN_TYPES.get(type_id, f"type_{type_id}")


def _raw_text(piece: str, kind: str) -> str | None:
    return None if "\ufffd" in piece else piece


def _byte_level_table() -> dict[int, str]:
    """str.translate table undoing GPT-2's byte -> printable-character map (``Ġ`` -> byte 0x20).

    GPT-2 keeps the printable latin-1 bytes as themselves and moves every other byte b,
    in order, to chr(256 + n). Characters 0-255 outside the map become U+FFFF so that
    a piece that is not byte-level text fails to encode as latin-1.
    """
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in kept}
    moved = [b for b in range(256) if b not in table]
    table.update({256 + n: chr(b) for n, b in enumerate(moved)})
    table.update({b: "\uffff" for b in moved})
    return table


_BYTE_LEVEL = _byte_level_table()


def _byte_level_text(piece: str, kind: str) -> str | None:
    """A byte-level BPE piece as the tokenizer decodes it: ``Ġthe`` -> ``" the"``.

    Control and user-defined tokens are stored as plain text (llama.cpp copies them
    as they are); a piece whose bytes are not whole UTF-8 text alone gives None.
    """
    if kind in ("control", "user_defined", "unknown"):
        return _raw_text(piece, kind)
    try:
        return piece.translate(_BYTE_LEVEL).encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:  # not byte-level encoded (an added token typed "normal")
        return _raw_text(piece, kind)
    except UnicodeDecodeError:  # a piece of a multi-byte character
        return None


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _sentencepiece_text(piece: str, kind: str) -> str | None:
    """A SentencePiece piece: ``▁the`` -> ``" the"``; ``<0x0A>`` -> ``"\\n"`` (None for bytes >= 0x80)."""
    byte = _BYTE_PIECE.match(piece)
    if byte is not None and kind in ("byte", "normal"):
        value = int(byte[1], 16)
        return chr(value) if value < 0x80 else None
    if kind in ("control", "user_defined", "unknown"):
        return _raw_text(piece, kind)
    text = _raw_text(piece, kind)
    return text.replace("\u2581", " ") if text is not None else None


_DECODERS = {"gpt2": _byte_level_text, "llama": _sentencepiece_text, "t5": _sentencepiece_text}
