"""The training corpus: reading it (safely), the bytes it never contains, the windows drawn from it.

One place for everything the toolkit knows about a corpus of bytes, used by the
training loop, the dynamics analysis and the reproduce pipeline alike:

* :func:`read_corpus` reads a path (or takes bytes as given) with a size limit, and
  refuses what is not a regular file — a FIFO would block forever, a device never end;
* :func:`never_seen` lists the byte ids below the vocabulary that never occur;
* :func:`window_starts` draws the random training windows from the seed, and
  :func:`draw_counts` counts how often each byte was drawn as an input and as a target.

>>> corpus = read_corpus(b"abracadabra")
>>> corpus.size, never_seen(corpus.data, 100)[-2:], never_seen(bytes([0, 2]), 4)
(11, [95, 96], [1, 3])
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError

MAX_CORPUS_BYTES = 1 << 30  # 1 GiB: far more text than a byte-level toy model needs, small enough to hold
_COUNT_BLOCK = 4096  # windows counted at a time, so counting a long run needs little memory


def default_corpus_path() -> Path:
    """The small ASCII corpus that ships with the package (used when no corpus is given).

    >>> default_corpus_path().name
    'default_corpus.txt'
    """
    return Path(str(resources.files("blackholes") / "data" / "default_corpus.txt"))


@dataclass(frozen=True)
class Corpus:
    """The bytes of a corpus and where they came from (``path`` None for bytes given directly).

    >>> Corpus(b"aab", None).tokens
    array([97, 97, 98], dtype=uint8)
    """

    data: bytes
    path: Path | None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def tokens(self) -> np.ndarray:
        """The bytes as a read-only ``uint8`` array (no copy)."""
        return np.frombuffer(self.data, dtype=np.uint8)

    @property
    def name(self) -> str:
        """How messages name the corpus: its path, or ``<bytes>``."""
        return str(self.path) if self.path is not None else "<bytes>"

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def to_json(self) -> dict:
        return {"path": None if self.path is None else str(self.path), "bytes": self.size,
                "sha256": self.sha256(), "distinct_bytes": int(np.count_nonzero(np.bincount(self.tokens)))}


def read_corpus(source: str | os.PathLike | bytes | bytearray | memoryview | None = None,
                *, limit: int = MAX_CORPUS_BYTES) -> Corpus:
    """Read a corpus: a path (None = the packaged corpus), or bytes taken as they are.

    Refused with one line each: a missing path, a directory, a FIFO / device / socket,
    an unreadable file, and anything over ``limit`` bytes (the message says the limit).

    >>> read_corpus(b"hello").size
    5
    >>> read_corpus(b"hello", limit=4)
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: corpus <bytes> has 5 bytes, over the limit of 4 bytes
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_limit(len(data), limit, "<bytes>")
        return Corpus(data, None)
    from blackholes.io.paths import input_file

    path = input_file(default_corpus_path() if source is None else source, "corpus file")
    try:
        with open(path, "rb") as f:
            _check_limit(os.fstat(f.fileno()).st_size, limit, path)
            data = f.read(limit + 1)  # +1: a file that grew since fstat still cannot slip past the limit
    except OSError as e:
        raise BlackholesError(f"cannot read corpus {path}: {e.strerror or e}") from None
    _check_limit(len(data), limit, path)
    return Corpus(data, path)


def _check_limit(size: int, limit: int, where) -> None:
    if size > limit:
        raise BlackholesError(f"corpus {where} has {size:,} bytes, over the limit of {limit:,} bytes")


def check_vocabulary(corpus: Corpus, vocab: int) -> None:
    """Refuse a corpus holding a byte the vocabulary cannot represent (the first one is named).

    >>> check_vocabulary(Corpus(b"ok\\xff", None), 128)
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: corpus byte 0xff at offset 2 of <bytes> is outside the vocabulary of 128 (1 such bytes); use a larger --vocab (256 takes any byte)
    """
    bad = np.flatnonzero(corpus.tokens >= vocab)
    if bad.size:
        where = int(bad[0])
        raise BlackholesError(
            f"corpus byte 0x{corpus.data[where]:02x} at offset {where} of {corpus.name} is outside the vocabulary "
            f"of {vocab} ({bad.size} such bytes); use a larger --vocab (256 takes any byte)"
        )


def check_length(corpus: Corpus, context: int) -> None:
    """Refuse a corpus shorter than one training window (``context + 1`` bytes).

    >>> check_length(Corpus(b"short", None), 16)
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: corpus <bytes> has 5 bytes; a training window needs context + 1 = 17 (use a longer corpus or a smaller --context)
    """
    need = context + 1
    if corpus.size < need:
        raise BlackholesError(
            f"corpus {corpus.name} has {corpus.size} bytes; a training window needs context + 1 = {need} "
            "(use a longer corpus or a smaller --context)"
        )


def never_seen(data: bytes | np.ndarray, vocab: int) -> list[int]:
    """Byte ids below ``vocab`` that never occur in ``data`` (sorted).

    >>> never_seen(b"\\x00\\x02", 4)
    [1, 3]
    """
    tokens = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    present = np.bincount(np.asarray(tokens, dtype=np.uint8), minlength=256)[:vocab] > 0
    return [int(i) for i in np.flatnonzero(~present)]


def window_starts(seed: int, steps: int, batch: int, corpus_len: int, context: int) -> np.ndarray:
    """Start offsets ``[steps, batch]`` (int64) of the random training windows of ``context + 1`` bytes.

    Drawn in one call from the seed's own stream (PCG64 seeded with ``[seed, 0x6A7]``):
    a window starts anywhere its ``context + 1`` bytes fit.

    >>> window_starts(0, 3, 1, 100, 10).ravel().tolist()
    [88, 9, 36]
    """
    rng = np.random.Generator(np.random.PCG64([seed, 0x6A7]))
    return rng.integers(0, corpus_len - context, size=(steps, batch), dtype=np.int64)


def draw_counts(tokens: np.ndarray, starts: np.ndarray, context: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each byte was drawn as an input and as a target by the windows at ``starts``.

    A window of ``context + 1`` bytes gives its first ``context`` bytes as inputs and
    its last ``context`` as targets.

    >>> inputs, targets = draw_counts(np.frombuffer(b"\\x00\\x01\\x02", np.uint8), np.array([[0]]), 2, 3)
    >>> inputs.tolist(), targets.tolist()
    ([1, 1, 0], [0, 1, 1])
    """
    inputs = np.zeros(vocab, dtype=np.int64)
    targets = np.zeros(vocab, dtype=np.int64)
    offsets = np.arange(context + 1)
    flat = np.asarray(starts).reshape(-1)
    for i in range(0, len(flat), _COUNT_BLOCK):
        windows = tokens[flat[i : i + _COUNT_BLOCK, None] + offsets]
        inputs += np.bincount(windows[:, :-1].ravel(), minlength=vocab)[:vocab]
        targets += np.bincount(windows[:, 1:].ravel(), minlength=vocab)[:vocab]
    return inputs, targets
