"""Safe paths: what a command may read, and what it may write or delete.

Every command checks all of its outputs here *before* anything is written or deleted:
an output that is one of the command's inputs (through symlinks, hard links or ``..``),
two outputs naming one file, an output that is a directory or a FIFO, an unwritable
folder, and a file ``--force`` would remove that is an input of this run are all
refused with one line naming both paths. Inputs that are not regular files (a FIFO
would block forever, a device would never end) are refused by :func:`input_file`.

>>> check_outputs(["mask.safetensors"], inputs=["model.safetensors"])
[PosixPath('mask.safetensors')]
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from blackholes.errors import BlackholesError


STDOUT = "-"  # an output named "-" is standard output: nothing to check or write


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: through links, ``..`` and hard links alike.

    >>> same_file("model.safetensors", "./sub/../model.safetensors")
    True
    """
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path when it is an existing regular file; else one clear line.

    >>> input_file("model.safetensors")
    PosixPath('model.safetensors')
    >>> input_file("no-such.safetensors")
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: no such file: no-such.safetensors
    """
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise BlackholesError(f"no such {what}: {path}") from None
    except OSError as e:
        raise BlackholesError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise BlackholesError(f"expected a {what}, got a directory: {path}")
    if not stat.S_ISREG(mode):
        raise BlackholesError(f"{path} is not a regular file ({_kind(mode)}); give a {what}")
    return path


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def check_output_path(path: str | os.PathLike, *, inputs: Iterable = ()) -> Path:
    """Refuse an output that cannot be written or that would overwrite one of ``inputs``
    (the files the command reads; ``None`` skipped). Returns ``Path(path)``.

    >>> check_output_path("mask.safetensors", inputs=["model.safetensors"])
    PosixPath('mask.safetensors')
    """
    out = Path(path)
    if out.is_dir():
        raise BlackholesError(f"output path is a directory: {out}")
    if out.exists() and not out.is_file():
        raise BlackholesError(f"output {out} exists and is not a regular file; choose another path")
    parent = out.parent  # Path("x").parent is Path(".")
    if not parent.is_dir():
        raise BlackholesError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BlackholesError(f"cannot write to {parent} (permission denied)")
    refuse_inputs([out], inputs)
    return out


def refuse_inputs(outputs: Iterable, inputs: Iterable) -> None:
    """One line when any of ``outputs`` (existing or not) is one of ``inputs`` — through symlinks, hard
    links and ``..``, as :func:`same_file` tells — in time linear in both (a census checks thousands).

    >>> refuse_inputs(["census/census.jsonl"], ["model.safetensors"])
    >>> refuse_inputs(["./sub/../model.safetensors"], ["model.safetensors"])
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: output ./sub/../model.safetensors is an input of this command (model.safetensors); choose another path
    """
    index: dict = {}
    for source in inputs:
        if source is not None:
            for key in _identities(source):
                index.setdefault(key, source)
    for out in outputs:
        for key in _identities(out):
            if key in index:
                raise BlackholesError(f"output {out} is an input of this command ({index[key]}); choose another path")


def _identities(path) -> list[tuple]:
    """What :func:`same_file` compares: where the path leads, and the file (device, inode) when it exists."""
    keys = [("path", os.path.realpath(path))]
    try:
        st = os.stat(path)
    except OSError:
        return keys
    return keys + [("inode", st.st_dev, st.st_ino)]


def check_outputs(outputs: Iterable, inputs: Iterable = (), *, removals: Iterable = ()) -> list[Path]:
    """Check every output (``None`` skipped) and every file ``--force`` would remove, before any work.

    Refused: an output that is an input, two outputs naming one file, an output that cannot be
    written (see :func:`check_output_path`), and a removal that is an input of this run.

    >>> check_outputs(["a.json", "./a.json"])
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: two outputs name the same file: ./a.json and a.json
    """
    inputs = [i for i in inputs if i is not None]
    outs: list[Path] = []
    for out in outputs:
        if out is None or out == "" or out == STDOUT:
            continue
        path = check_output_path(out, inputs=inputs)
        for other in outs:
            if same_file(path, other):
                raise BlackholesError(f"two outputs name the same file: {out} and {other}")
        outs.append(path)
    for victim in removals:
        for source in inputs:
            if same_file(victim, source):
                raise BlackholesError(f"--force would remove {victim}, which is an input of this command "
                                      f"({source}); choose another --out")
    return outs
