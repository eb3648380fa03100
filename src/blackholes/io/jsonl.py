"""Append-only result rows: one JSON object a line, appended and fsynced as work finishes.

The one home for ``census.jsonl``, ``runs.jsonl`` and every store like them:

* :func:`clean` turns a row into plain JSON (numpy scalars and arrays to numbers and
  lists, NaN and infinities to ``null``, paths to text);
* :meth:`JsonlStore.append` writes whole lines, flushed and fsynced: a crash after it
  returns loses nothing;
* one rule for a torn last line (a crash in the middle of an append): the part after the
  last newline is not a row. Reading ignores it; :meth:`JsonlStore.repair` cuts it off
  before the next append, so it never joins the next row;
* every line is parsed by :func:`blackholes.io.untrusted.parse_json` (a store may come
  from anywhere).

>>> store = JsonlStore("jsonl-example.jsonl")
>>> store.append([{"run": 0, "loss": float("nan")}, {"run": 1, "loss": np.float32(2.5)}])
>>> store.rows()
[{'run': 0, 'loss': None}, {'run': 1, 'loss': 2.5}]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError


def clean(value):
    """Plain JSON values: dict keys as text, tuples as lists, numpy as Python, NaN/inf as None.

    >>> clean({"a": (np.int64(3), float("inf")), 2: Path("x")})
    {'a': [3, None], '2': 'x'}
    """
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def dumps(row: dict) -> str:
    """One row as one line of JSON (no newline inside: JSON escapes them in strings)."""
    return json.dumps(clean(row), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


class JsonlStore:
    """A ``.jsonl`` file of rows, appended to as results arrive.

    ``strict``: a whole line that is not a JSON object makes the file not a store of ours
    (:class:`BlackholesError`); otherwise such lines are skipped.
    """

    def __init__(self, path, *, strict: bool = False):
        self.path = Path(path)
        self.strict = strict
        self._repaired = False

    def rows(self) -> list[dict]:
        """Every complete row, in file order (the torn tail, if any, left out)."""
        return [row for _, row in self.numbered() if row is not None]

    def numbered(self) -> list[tuple[int, dict | None]]:
        """``(line number, row)`` of every complete, non-blank line; ``row`` is None for a line
        that is not a JSON object (with ``strict``, such a line is an error instead)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise BlackholesError(f"cannot read {self.path}: {e.strerror or e}") from None
        from blackholes.io.untrusted import parse_json

        out = []
        for number, line in enumerate(data.split(b"\n")[:-1], start=1):  # after the last newline: torn
            if not line.strip():
                continue
            try:
                row = parse_json(line, what=f"{self.path.name} line {number}")
            except BlackholesError:
                row = None
            if not isinstance(row, dict):
                if self.strict:
                    raise BlackholesError(f"{self.path} line {number} is not a row of JSON")
                row = None
            out.append((number, row))
        return out

    def torn(self) -> bool:
        """Whether the file ends in a torn line (text after its last newline)."""
        try:
            with open(self.path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(0, end - 1))
                return end > 0 and f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def repair(self) -> None:
        """Cut off a torn last line (a crash mid-append), so the next append starts a line."""
        try:
            with open(self.path, "r+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end == 0:
                    return
                f.seek(max(0, end - 1))
                if f.read(1) == b"\n":
                    return
                keep = end
                while keep > 0:  # back to the last newline, a block at a time
                    start = max(0, keep - 65536)
                    f.seek(start)
                    block = f.read(keep - start)
                    i = block.rfind(b"\n")
                    if i >= 0:
                        keep = start + i + 1
                        break
                    keep = start
                f.truncate(keep)
        except FileNotFoundError:
            pass
        self._repaired = True

    def append(self, rows) -> None:
        """Whole lines, flushed and fsynced. ``rows``: a dict or a list of dicts."""
        rows = [rows] if isinstance(rows, dict) else list(rows)
        if not self._repaired:
            self.repair()
        data = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
