"""The text of a token: its Unicode script, its bytes, and the names of unused slots.

``script_of`` names the script of a text (ISO 15924, from ``fontTools.unicodedata``,
imported on first use); ``script_of_bytes`` does it for bytes that may stop inside a
UTF-8 character; the byte-level alphabet (GPT-2's bytes-as-characters) maps pieces
back to bytes. :mod:`blackholes.analysis.vocabulary` builds the categories on these.

>>> byte_category(0x41), byte_category(0xC3), byte_category(0x80), byte_category(0xFF)
('byte_ascii', 'byte_utf8_lead', 'byte_utf8_continuation', 'byte_invalid_utf8')
>>> is_unused_name("<|reserved_special_token_7|>"), is_unused_name("<|im_start|>")
(True, False)
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache
from typing import Iterable

_UNUSED_NAME = re.compile(
    r"^[<\[](?:\||｜)?\s*(?:unused|reserved|place[_▁ ]?holder)[^<>\[\]]*(?:\||｜)?[>\]]$", re.IGNORECASE
)

# ------------------------------------------------------------------------------ scripts


_SCRIPT_OF_CHAR: dict[str, str] = {}  # character -> ISO 15924 code: most tokens reuse a few thousand characters


def _char_script(ch: str) -> str:
    code = _SCRIPT_OF_CHAR.get(ch)
    if code is None:
        from fontTools import unicodedata as ucd

        code = _SCRIPT_OF_CHAR[ch] = ucd.script(ch)
    return code


@lru_cache(maxsize=None)
def _script_name(code: str) -> str:
    from fontTools import unicodedata as ucd

    return ucd.script_name(code, default=code)


_NOT_A_SCRIPT = ("Zyyy", "Zinh", "Zzzz")  # Common, Inherited, Unknown: in this order of precedence


def _combine(codes: Iterable[str]) -> str:
    """One script name for a token from its characters' ISO 15924 codes."""
    seen = set(codes)
    real = seen.difference(_NOT_A_SCRIPT)
    if len(real) == 1:
        return _script_name(real.pop())
    if real:
        return "mixed"
    for code in _NOT_A_SCRIPT:
        if code in seen:
            return _script_name(code)
    return "none"


def script_of(text: str | None) -> str:
    """The Unicode script of ``text``: "Latin", "Han", "Thai", ..., "Common", "mixed" or "none".

    Common and Inherited characters (spaces, digits, punctuation; combining marks)
    count only when nothing else is there.

    >>> script_of("Привет"), script_of(" ไทย!"), script_of("  "), script_of("abcПри")
    ('Cyrillic', 'Thai', 'Common', 'mixed')
    """
    if not text:
        return "none"
    get = _SCRIPT_OF_CHAR.get
    return _combine([get(ch) or _char_script(ch) for ch in set(text)])


def _utf8_length(lead: int) -> int:
    """Bytes in the sequence a lead byte starts (0: not a lead byte)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


@lru_cache(maxsize=4096)
def _partial_script(head: bytes) -> str:
    """Script code of an incomplete UTF-8 character (1 or 2 bytes missing): the script (Common
    included) of at least 90% of the assigned characters it could complete to, else "Zzzz"."""
    missing = _utf8_length(head[0]) - len(head)
    if missing < 1 or missing > 2:
        return "Zzzz"
    tails = [bytes([b]) for b in range(0x80, 0xC0)]
    if missing == 2:
        tails = [a + b for a in tails for b in tails]
    counts: dict[str, int] = {}
    for tail in tails:
        try:
            ch = (head + tail).decode("utf-8")
        except UnicodeDecodeError:  # overlong or surrogate completions do not exist
            continue
        code = _char_script(ch)
        if code != "Zzzz":  # unassigned code points say nothing
            counts[code] = counts.get(code, 0) + 1
    if not counts:
        return "Zzzz"
    code, n = max(counts.items(), key=lambda kv: kv[1])
    return code if n >= 0.9 * sum(counts.values()) else "Zzzz"


def _incomplete_tail(data: bytes) -> bytes:
    """The bytes of an incomplete character at the end of ``data`` (empty if there is none)."""
    for back in range(1, min(3, len(data)) + 1):
        n = _utf8_length(data[-back])
        if n > 1:
            return data[-back:] if n > back else b""
        if n == 1 or data[-back] > 0xBF:  # ASCII or an invalid byte: nothing pending
            return b""
    return b""


def script_of_bytes(data: bytes) -> str:
    """The script of a token's raw bytes, reading partial UTF-8 (see the module docstring).

    >>> script_of_bytes("ไ".encode()[:2]), script_of_bytes(b"\\x80"), script_of_bytes(b" the")
    ('Thai', 'Unknown', 'Latin')
    """
    if not data:
        return "none"
    try:
        return script_of(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    codes = {_char_script(ch) for ch in set(data.decode("utf-8", "ignore"))}
    tail = _incomplete_tail(data)
    if tail:
        codes.add(_partial_script(tail))
    return _combine(codes) if codes else "Unknown"


def _hex_bytes(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: undecodable bytes written as ``<0xNN>``."""
    return "".join(f"<0x{b:02X}>" for b in error.object[error.start:error.end]), error.end


codecs.register_error("blackholes_hex", _hex_bytes)


def readable_bytes(data: bytes) -> str:
    """Bytes as text: whole UTF-8 characters as themselves, every other byte as ``<0xNN>``.

    >>> readable_bytes(b"ok\\xe0\\xb8"), readable_bytes(" ไ".encode()), readable_bytes(b"\\xb8a")
    ('ok<0xE0><0xB8>', ' ไ', '<0xB8>a')
    """
    return data.decode("utf-8", "blackholes_hex")


def byte_category(value: int) -> str:
    """The category of a one-byte token with byte ``value``.

    >>> [byte_category(b) for b in (0x41, 0xC3, 0x80, 0xFF)]
    ['byte_ascii', 'byte_utf8_lead', 'byte_utf8_continuation', 'byte_invalid_utf8']
    """
    if value < 0x80:
        return "byte_ascii"
    if value <= 0xBF:
        return "byte_utf8_continuation"
    if _utf8_length(value):
        return "byte_utf8_lead"
    return "byte_invalid_utf8"


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte.

    Printable Latin-1 bytes stand for themselves; the other 68 map, in byte order,
    to U+0100 onwards (so the space is "Ġ", U+0120).

    >>> byte_level_alphabet()["Ġ"], byte_level_alphabet()["a"]
    (32, 97)
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in set(printable)]
    chars.update({chr(0x100 + n): b for n, b in enumerate(others)})
    return chars


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[int, str]:
    """``str.translate`` table: each alphabet character to the Latin-1 character of its byte,
    every other character up to U+0143 to U+FFFF (which then fails to encode as Latin-1)."""
    table = {c: "\uffff" for c in range(0x144)}
    table.update({ord(ch): chr(b) for ch, b in byte_level_alphabet().items()})
    return table


def byte_level_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level (GPT-2 style) piece spells; None if it is not one.

    >>> byte_level_bytes("Ġthe"), byte_level_bytes("à¸"), byte_level_bytes("a b")
    (b' the', b'\\xe0\\xb8', None)
    """
    try:
        return piece.translate(_byte_level_table()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def is_unused_name(piece: str | None) -> bool:
    """Whether a piece names a reserved slot (``[unused3]``, ``<|reserved_special_token_0|>``, ...).

    >>> is_unused_name("[unused12]"), is_unused_name("<|reserved_special_token_3|>"), is_unused_name("<s>")
    (True, True, False)
    """
    return bool(piece) and piece[0] in "<[" and _UNUSED_NAME.match(piece) is not None
