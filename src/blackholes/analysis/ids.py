"""Lists of ids as text, both ways: ``"0-3,10"`` to ids and ids back to runs or bytes.

Token ids, training steps and the bytes of a byte-level vocabulary are read from the
command line and written into reports with these, everywhere (numpy only).

>>> parse_tokens("0-3,10")
[0, 1, 2, 3, 10]
>>> format_ids([0, 1, 2, 3, 10])
'0-3, 10'
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from blackholes.errors import BlackholesError


def parse_steps(steps: Iterable[int] | str, last: int | None = None) -> list[int]:
    """``"0,1,2,10"`` or ``[0, 1, 2, 10]`` -> sorted unique training steps.

    With ``last`` (the recording's last step) a range ending beyond it is refused
    before it is expanded; single steps beyond it are kept (the report skips them).

    >>> parse_steps("0,1,2,10,100")
    [0, 1, 2, 10, 100]
    """
    if isinstance(steps, str):
        limit = None if last is None else (last, f"the recording's last step {last}")
        values = _parse_ids(steps, what="step", range_limit=limit)
    else:
        values = [as_int(s, "step") for s in steps]
    return sorted(set(values))


def parse_tokens(text: str, vocab: int | None = None) -> list[int]:
    """``"1,2,5-9"`` -> ``[1, 2, 5, 6, 7, 8, 9]``; with ``vocab``, ids outside it are refused
    before any range is expanded (so ``0-1000000000`` fails at once).

    >>> parse_tokens("0-3,10")
    [0, 1, 2, 3, 10]
    """
    limit = None if vocab is None else (vocab - 1, f"the vocabulary (0-{vocab - 1})")
    return sorted(set(_parse_ids(text, what="token id", limit=limit)))


def as_int(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise BlackholesError(f"{what} must be an integer, got {value!r}")
    if value < 0:
        raise BlackholesError(f"{what} must not be negative, got {value}")
    return int(value)


def _parse_ids(text: str, what: str, limit: tuple[int, str] | None = None,
               range_limit: tuple[int, str] | None = None) -> list[int]:
    """``limit`` = (largest allowed id, its description) for every id; ``range_limit`` for range ends only.
    Both are checked before a range is expanded: ``0-1000000000`` must not build a billion-item list."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise BlackholesError(f"bad {what} list {text!r}: expected e.g. '1,2,5-9'") from None
        if b < a:
            raise BlackholesError(f"bad {what} range {part!r}: end before start")
        if limit is not None and b > limit[0]:
            raise BlackholesError(f"{what} {b} is outside {limit[1]}")
        if sep and range_limit is not None and b > range_limit[0]:
            raise BlackholesError(f"{what} range {part!r} goes beyond {range_limit[1]}")
        out.extend(range(a, b + 1))
    if not out:
        raise BlackholesError(f"empty {what} list {text!r}")
    return out


def format_ids(ids: list[int]) -> str:
    """Sorted ids as runs.

    >>> format_ids([0, 1, 2, 5, 7, 8])
    '0-2, 5, 7-8'
    """
    parts, run = [], []
    for t in ids:
        if run and t == run[-1] + 1:
            run.append(t)
        else:
            if run:
                parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
            run = [t]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
    return ", ".join(parts)


def format_bytes(ids: list[int], limit: int = 256) -> str:
    """Byte ids as readable characters, space-separated; unprintable bytes, the space and the
    Markdown marks `` ` | * \\ `` as ``\\xNN``; ids beyond 255 as numbers.

    >>> print(format_bytes([65, 0, 32, 300]))
    A \\x00 \\x20 300
    """
    shown = []
    for t in ids[:limit]:
        c = chr(t) if t < 256 else None
        if c is not None and c.isprintable() and c not in " `|*\\":
            shown.append(c)
        elif t < 256:
            shown.append(f"\\x{t:02x}")
        else:
            shown.append(str(t))
    more = f" … (+{len(ids) - limit})" if len(ids) > limit else ""
    return " ".join(shown) + more
