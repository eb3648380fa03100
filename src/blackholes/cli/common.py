"""What several commands print the same way: progress lines on stderr, and what a stopped run kept.

>>> kept_rows("no-such-folder/census.jsonl")
'0 rows kept in no-such-folder/census.jsonl; run the same command again to go on'
"""

from __future__ import annotations

import sys
from pathlib import Path


def log_line(line: str) -> None:
    """One progress line on stderr, written in one call: a signal arriving between the text and its
    newline would otherwise leave the stop line glued to it."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def kept_rows(path) -> str:
    """What a stopped run kept, counted from the file itself (a signal may land between a row's append
    and any in-memory count of it): the rows a re-run will not redo."""
    from blackholes.io.jsonl import JsonlStore

    path = Path(path)
    kept = len(JsonlStore(path).rows()) if path.is_file() else 0
    return f"{kept:,} rows kept in {path}; run the same command again to go on"
