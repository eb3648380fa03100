"""Exact groups of rows: which rows of a matrix are bit-for-bit identical.

Identity is the identity of raw bits, exactly as ``row.tobytes()`` in the original
notebook: ``+0.0`` and ``-0.0`` differ, two NaNs with the same bits are the same.
Every dtype is compared through an unsigned-integer view of its bytes.

How it runs at memory speed, and stays exact:

1. *Sieve.* Hash the first 64 bytes of every row. A row whose prefix hash is
   unique has a prefix no other row has, so it is unique: proven, not guessed.
   This touches one cache line per row, not the whole matrix.
2. *Hash.* The rows that survive (the candidates) are hashed in full, in chunks
   that fit in cache: a 64-bit multiply-add of the row's 8-byte words.
3. *Verify.* Candidates are sorted by hash; every row of a run of equal hashes is
   compared byte-for-byte with the run's first row. A run holding several distinct
   vectors (a hash collision) is split exactly by sorting its raw bytes. A hash can
   therefore only make the scan slower, never wrong.

This is the bottom of ``analysis/``: numpy only, so every other analysis (the scan,
the halos, the density map, the lifecycle of a recording) can import it.

>>> find_groups(np.array([[1, 2], [3, 4], [1, 2], [3, 4], [5, 6]], np.int8))
[array([0, 2]), array([1, 3])]
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from blackholes.errors import BlackholesError

PREFIX_BYTES = 64  # one cache line: enough to tell almost all distinct rows apart
CHUNK_BYTES = 1 << 20  # rows hashed per step: about 1 MiB, stays in L2

def _multipliers(n: int) -> np.ndarray:
    """``n`` fixed, odd, well-mixed 64-bit constants (splitmix64 of 1, 2, 3, ...), read-only."""
    return _splitmix(max(4096, 1 << max(0, n - 1).bit_length()))[:n]


@functools.lru_cache(maxsize=8)
def _splitmix(size: int) -> np.ndarray:
    """The first ``size`` constants, made once per size: the same for every scan in a process."""
    with np.errstate(over="ignore"):
        z = np.arange(1, size + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out = (z ^ (z >> np.uint64(31))) | np.uint64(1)
    out.flags.writeable = False
    return out



def find_groups(array: np.ndarray, *, threads: int | None = None) -> list[np.ndarray]:
    """Every set of two or more bit-identical rows, as sorted int64 row ids.

    Ordered largest first, equal sizes by smallest row id. Exact for any dtype.

    >>> find_groups(np.array([[1, 2], [3, 4], [1, 2]], np.float32))
    [array([0, 2])]
    """
    rows = _byte_rows(array)
    n, width = rows.shape
    threads = threads or min(2, os.cpu_count() or 1)
    prefix = min(width, PREFIX_BYTES)
    _multipliers(-(-width // 8))  # made once, before the threads share them

    # 1. sieve: rows with a unique prefix are unique
    chunk = max(1, CHUNK_BYTES // max(prefix, 8))
    spans = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda s: hash_rows(rows[s[0] : s[1], :prefix]), spans))
    prefix_hash = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    candidates = _in_runs(prefix_hash)
    if len(candidates) < 2:
        return []

    # 2. full hash of the candidates (skip when the prefix was the whole row)
    if prefix == width:
        full = prefix_hash[candidates]
    else:
        step = max(1, CHUNK_BYTES // width)
        spans = [(lo, min(len(candidates), lo + step)) for lo in range(0, len(candidates), step)]
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda s: hash_rows(_take(rows, candidates[s[0] : s[1]])), spans))
        full = np.concatenate(parts)
    order = np.argsort(full, kind="stable")
    ids, hashes = candidates[order], full[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    lengths = np.diff(np.r_[starts, len(ids)])
    multi = lengths >= 2
    starts, lengths = starts[multi], lengths[multi]
    if len(starts) == 0:
        return []

    # 3. verify every member against its run's first row, byte for byte
    member = np.repeat(np.arange(len(starts)), lengths)  # run index of each member
    before = np.cumsum(lengths) - lengths  # members listed before each run
    pos = np.repeat(starts - before, lengths) + np.arange(lengths.sum())  # positions in ids
    members, firsts = ids[pos], ids[starts][member]
    same = np.empty(len(members), dtype=bool)
    step = max(1, CHUNK_BYTES // width)
    words = _word_view(rows)
    for lo in range(0, len(members), step):
        hi = lo + step
        same[lo:hi] = (_take(words, members[lo:hi]) == _take(words, firsts[lo:hi])).all(axis=1)

    groups: list[np.ndarray] = []
    bad = np.zeros(len(starts), dtype=bool)
    bad[member[~same]] = True  # runs that mix distinct vectors: a real hash collision
    for r in np.flatnonzero(~bad):
        groups.append(np.sort(ids[starts[r] : starts[r] + lengths[r]]))
    for r in np.flatnonzero(bad):
        groups.extend(_split_exactly(rows, ids[starts[r] : starts[r] + lengths[r]]))
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def hash_rows(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes: sum of (8-byte word x odd constant), mod 2**64.

    Linear, so cheap; odd multipliers make any single-word difference change the
    hash. Collisions between other rows are possible, and :func:`find_groups`
    verifies every match byte-for-byte.
    """
    words = _u64_words(rows)
    return (words * _multipliers(words.shape[1])).sum(axis=1, dtype=np.uint64)


def _byte_rows(array: np.ndarray) -> np.ndarray:
    """A (V, row_bytes) uint8 view of a 2-D array, without copying when it is C-contiguous."""
    if array.ndim != 2:
        raise BlackholesError(f"expected a 2-D matrix, got shape {list(array.shape)}")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return np.asarray(array).view(np.uint8).reshape(array.shape[0], -1)


def _u64_words(rows: np.ndarray) -> np.ndarray:
    """Rows of bytes as little-endian uint64 words, zero-padded to a multiple of 8 bytes."""
    n, width = rows.shape
    if width % 8 == 0 and rows.flags.c_contiguous:
        return rows.view(np.uint64)
    padded = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = rows
    return padded.view(np.uint64)


def _word_view(rows: np.ndarray) -> np.ndarray:
    """The widest unsigned-integer view of byte rows, for fast exact comparison."""
    width = rows.shape[1]
    for size, dt in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if width % size == 0:
            return rows.view(dt)
    return rows


def _take(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """rows[ids], as a slice (no gather) when ids are consecutive and ascending.

    (In the verification step ids come in hash order: [1, 3, 2, 4] spans 1..4 but is not rows 1..4.)
    """
    if len(ids) and ids[-1] - ids[0] + 1 == len(ids) and np.all(np.diff(ids) == 1):
        return rows[ids[0] : ids[-1] + 1]
    return rows[ids]


def _in_runs(hashes: np.ndarray) -> np.ndarray:
    """Sorted ids of the rows whose hash occurs more than once."""
    order = np.argsort(hashes, kind="stable")
    s = hashes[order]
    dup = np.zeros(len(s), dtype=bool)
    eq = s[1:] == s[:-1]
    dup[1:] |= eq
    dup[:-1] |= eq
    return np.sort(order[dup])


def _split_exactly(rows: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Split rows that share a hash into groups of truly identical bytes (sort by raw bytes)."""
    ids = np.sort(ids)
    data = np.ascontiguousarray(rows[ids])
    keys = data.view(np.dtype((np.void, data.shape[1]))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    return [ids[inverse == k] for k in np.flatnonzero(counts >= 2)]
