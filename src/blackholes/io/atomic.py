"""Atomic output: a file appears complete under its final name, or not at all.

Every file the toolkit writes goes through :func:`atomic_path`: the content is
written to a temporary name in the same directory, flushed to disk, then renamed
over the target (``os.replace`` is atomic on POSIX). An exception or Ctrl-C before
the rename removes the temporary file and leaves any previous file untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: through links, ``..`` and hard links alike.

    >>> same_file("model.safetensors", "./sub/../model.safetensors")
    True
    """
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path: str | os.PathLike, *, inputs=()) -> Path:
    """Refuse, before any work is done, an output that cannot be written or that
    would overwrite one of ``inputs`` (the files the command reads; ``None`` skipped).

    Raises :class:`BlackholesError` with a one-line reason; returns ``Path(path)``.

    >>> check_output_path("mask.safetensors", inputs=["model.safetensors"])
    PosixPath('mask.safetensors')
    """
    from blackholes.errors import BlackholesError

    out = Path(path)
    if out.is_dir():
        raise BlackholesError(f"output path is a directory: {out}")
    parent = out.parent  # Path("x").parent is Path(".")
    if not parent.is_dir():
        raise BlackholesError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BlackholesError(f"cannot write to {parent} (permission denied)")
    for source in inputs:
        if source is not None and same_file(out, source):
            raise BlackholesError(f"output {out} is an input of this command ({source}); choose another path")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    >>> with atomic_path("mask.safetensors") as tmp:
    ...     save_file(tensors, tmp)
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        from blackholes.errors import BlackholesError

        raise BlackholesError(f"output directory does not exist: {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    >>> write_text("report.md", "# Report\\n")
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    >>> write_json("scan.json", result.to_json())
    """
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
