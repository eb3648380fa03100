"""Bounded parsing of JSON that comes from a file, a server or a user.

``json.loads`` trusts its input: ten thousand nested brackets end in a
``RecursionError``, an integer of five thousand digits in a ``ValueError``
about ``sys.set_int_max_str_digits``, and ``NaN`` is accepted as a number.
Every JSON this package did not write itself in this process goes through
:func:`parse_json`, which refuses all of these with one line that names the
input and the limit it broke.

>>> parse_json('{"shape": [151936, 2560]}', what="header")
{'shape': [151936, 2560]}
>>> parse_json("[" * 100 + "]" * 100, what="config.json")
Traceback (most recent call last):
...
blackholes.errors.BlackholesError: config.json: JSON nested deeper than 64 levels
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from blackholes.errors import BlackholesError

MAX_DEPTH = 64
MAX_BYTES = 256 * 2**20
MAX_INT_DIGITS = 40  # a uint64 has 20; anything longer is not a size, an offset or an id
MAX_FLOAT_CHARS = 400  # the longest float repr is 24 characters; 400 leaves room for odd writers

# a JSON string literal, escapes included: removed before brackets are counted
# (possessive, and an unterminated string runs to the end: no input makes the scan quadratic)
_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_LONG_INT = re.compile(rb"(?<![0-9.])[0-9]{%d,}" % (MAX_INT_DIGITS + 1))
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def parse_json(data: bytes | str, *, what: str, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES,
               allow_nan: bool = False):
    """Parse untrusted JSON within limits, or raise :class:`BlackholesError` with one line.

    ``what`` names the input in the message (a file name, ``"census.jsonl line 3"``).

    >>> parse_json(b'{"n": 1e3}', what="x")
    {'n': 1000.0}
    >>> parse_json('{"n": 1' + '0' * 60 + '}', what="index.json")
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: index.json: an integer of 61 digits (more than 40)
    >>> parse_json('[NaN]', what="row")
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: row: NaN is not a JSON number
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise BlackholesError(f"{what}: {len(raw):,} bytes of JSON (more than {max_bytes:,})")
    stripped = _STRING.sub(b'""', raw)  # what is left is brackets, numbers, literals and punctuation
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth(stripped) > max_depth:
        raise BlackholesError(f"{what}: JSON nested deeper than {max_depth} levels")
    long_int = _LONG_INT.search(stripped)
    if long_int:  # found here, in C, rather than by a hook called for every integer
        digits = len(long_int.group())
        raise BlackholesError(f"{what}: an integer of {digits} digits (more than {MAX_INT_DIGITS})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BlackholesError(f"{what}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, parse_float=_bounded_float(what, allow_nan), parse_constant=_constant(what, allow_nan))
    except json.JSONDecodeError as e:
        raise BlackholesError(f"{what}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except RecursionError:  # cannot happen below max_depth; kept so no input ever escapes as a traceback
        raise BlackholesError(f"{what}: JSON nested deeper than {max_depth} levels") from None


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting in JSON text, strings skipped; counted without recursion.

    >>> json_depth(b'{"a": [1, {"b": "[[["}]}')
    3
    """
    return _depth(_STRING.sub(b'""', raw))


def _depth(stripped: bytes) -> int:
    if not stripped:
        return 0
    steps = _OPEN[np.frombuffer(stripped, dtype=np.uint8)]
    if not steps.any():
        return 0
    return int(np.cumsum(steps, dtype=np.int64).max())


def _bounded_float(what: str, allow_nan: bool):
    def parse(s: str) -> float:
        if len(s) > MAX_FLOAT_CHARS:
            raise BlackholesError(f"{what}: a number written in {len(s)} characters (more than {MAX_FLOAT_CHARS})")
        value = float(s)
        if not allow_nan and math.isinf(value):
            raise BlackholesError(f"{what}: {s} is beyond the largest float")
        return value

    return parse


def _constant(what: str, allow_nan: bool):
    def parse(name: str) -> float:
        if not allow_nan:
            raise BlackholesError(f"{what}: {name} is not a JSON number")
        return float(name)

    return parse
