"""Atomic output: a file appears complete under its final name, or not at all.

Every file the toolkit writes goes through :func:`atomic_path`: the content is
written to a temporary name in the same directory (``.NAME.<pid>.<random>.tmp``),
flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX).
An exception, Ctrl-C, SIGTERM or SIGHUP before the rename removes the temporary file
and leaves any previous file untouched; a temporary left by a killed process is
removed by the next run writing the same output. What may be written where is
checked beforehand in :mod:`blackholes.io.paths`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    >>> with atomic_path("notes.txt") as tmp:
    ...     _ = tmp.write_text("all or nothing")
    >>> Path("notes.txt").read_text()
    'all or nothing'
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        from blackholes.errors import BlackholesError

        raise BlackholesError(f"output directory does not exist: {parent}")
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give outputs the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete ``.NAME.<pid>.*.tmp`` files (and folders: ``repair`` builds its copy in one) beside
    ``path`` whose writing process is gone.

    A run killed outright (SIGKILL, power loss) cannot clean up after itself; the next run
    writing the same output does. A temporary of a process still alive is left alone.

    >>> remove_stale_temporaries("scan.json")
    []
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    for tmp in parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    >>> write_text("report.md", "# Report\\n")
    >>> Path("report.md").read_text()
    '# Report\\n'
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (``"-"``: to standard output).

    >>> write_json("numbers.json", {"holes": 13, "tokens": 2100})
    >>> Path("numbers.json").read_text()
    '{\\n  "holes": 13,\\n  "tokens": 2100\\n}\\n'
    """
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    if os.fspath(path) == "-":
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(path, text)
