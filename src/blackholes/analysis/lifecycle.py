"""The life of every hole: an exact census of a training recording, step by step.

At every recorded step the rows of the embedding matrix fall into groups of
bit-identical rows (identity of raw bytes, exactly as :func:`~blackholes.analysis.groups.scan`
decides it). This module follows that partition through the whole recording:

* per step: distinct vectors, holes (groups of two or more), tokens in holes,
  the largest hole, and the group of every token (``group_ids``, ``[records, V]``);
* events: every *fission* (a group's members stop being one point) and every
  *merger* (rows that were apart become identical);
* per token: the last step at which its row changed any bit; from which step the
  whole matrix, the holes and the trained tokens never change again;
* per hole, followed through its membership lineage: when it was *forming*,
  moving *rigidly*, or *frozen*.

How it stays fast (one pass over the memory map, ~4 MB of records at a time):
consecutive records are compared word for word first, and a record in which no
row changed has its predecessor's partition (no hashing at all). The other
records are hashed together (:func:`~blackholes.analysis.exact.hash_rows`),
each record's hashes are sorted (one ``argsort`` over ``[records, V]``), and
every row is then compared byte for byte with its group's first row; a record
where a hash collision joined different rows is regrouped exactly by sorting its
raw bytes. A hash can make the census slower, never wrong.

>>> emb = np.array([[[1], [1], [1]], [[1], [2], [2]], [[1], [3], [3]]], np.float32)
>>> c = census(emb, "F32", [0, 1, 2])
>>> c.group_ids.tolist()
[[0, 0, 0], [0, 1, 1], [0, 1, 1]]
>>> [(e.kind, e.step, e.before, e.after) for e in c.events]
[('fission', 1, [0, 1, 2], [[0], [1, 2]])]
>>> c.last_motion, c.frozen_from["matrix"]
([None, 2, 2], None)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from blackholes.analysis.exact import hash_rows
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import STORAGE_DTYPES

CHUNK_BYTES = 4 << 20  # records compared and hashed together: ~4 MB, so the temporaries stay small
PHASES = ("forming", "rigid", "frozen")
_FORMING, _RIGID, _FROZEN = 0, 1, 2


# ---------------------------------------------------------------------------- results


@dataclass
class Event:
    """A change of the partition between two consecutive records.

    ``fission``: the rows of group ``before`` (one point at the previous record) are
    no longer one point; ``after`` is how they are split (each part one point now).
    ``merger``: the rows of group ``after`` (one point now) were ``before`` several
    points (each part one point at the previous record). Token ids are sorted; parts
    are ordered by their smallest id. ``step`` is the recorded step at which the new
    partition is first seen. One change can be both (``{a,b},{c}`` to ``{a},{b,c}``).
    """

    kind: str  # "fission" | "merger"
    step: int
    record: int  # index into the recording
    before: list  # fission: list[int]; merger: list[list[int]]
    after: list  # fission: list[list[int]]; merger: list[int]
    never_seen: bool = False  # does it involve a never-seen token?

    def to_json(self) -> dict:
        return {"kind": self.kind, "step": self.step, "record": self.record, "before": self.before,
                "after": self.after, "never_seen": self.never_seen}


@dataclass
class Hole:
    """One hole followed through its membership lineage (see :func:`census` for the rules).

    ``phases``: runs of one phase, each ``(phase, first_step, last_step)``; a step's phase
    says what happened between the previous record and that step: ``forming`` (its
    membership changed), ``rigid`` (same members, their shared vector changed) or
    ``frozen`` (same members, no bit changed).
    """

    id: int  # 1, 2, ... in order of birth (then by smallest member)
    born: int  # step at which it is first seen
    origin: str  # "initial" (record 0), "split" (members all from one group), "merger" (from several)
    last_seen: int  # the last step at which it exists
    end: str  # "alive" (at the last record), "dissolved" (no member pair left), "absorbed" (into another hole)
    absorbed_into: int | None
    members_at_birth: list[int]
    members: list[int]  # at its last record
    phases: list[tuple[str, int, int]]
    frozen_from: int | None  # alive and frozen from this step to the end (None: moving or gone at the end)
    phase_counts: dict[str, int] = field(default_factory=dict)  # recorded transitions in each phase

    def to_json(self) -> dict:
        return {
            "id": self.id, "born": self.born, "origin": self.origin, "last_seen": self.last_seen,
            "end": self.end, "absorbed_into": self.absorbed_into, "size_at_birth": len(self.members_at_birth),
            "size": len(self.members), "members_at_birth": self.members_at_birth, "members": self.members,
            "frozen_from": self.frozen_from, "phase_counts": self.phase_counts,
            "phases": [{"phase": p, "from": a, "to": b} for p, a, b in self.phases],
        }


@dataclass
class Census:
    """The exact per-step census of a recording; ``to_json()`` is the ``census`` section.

    ``group_ids[r, v]`` is the **smallest token id** of the group holding token ``v`` at
    record ``r`` (a row alone in its group has its own id), so two records with the
    same partition have equal rows, and ``group_ids[r, v] == v`` marks one token per
    distinct vector.
    """

    shape: tuple[int, int, int]  # (records, vocab, dim)
    dtype: str
    steps: np.ndarray  # int64 [R], the training step of each record
    group_ids: np.ndarray = field(repr=False)  # int32 [R, V]
    distinct: np.ndarray = field(repr=False)  # int64 [R]: distinct vectors
    holes: np.ndarray = field(repr=False)  # int64 [R]: groups of >= 2 rows
    tokens_in_holes: np.ndarray = field(repr=False)  # int64 [R]
    largest: np.ndarray = field(repr=False)  # int64 [R]: size of the largest hole (0: none)
    largest_id: np.ndarray = field(repr=False)  # int64 [R]: its group id (-1: none; ties: smallest id)
    changed: np.ndarray = field(repr=False)  # bool [R, V]: row changed any bit since the previous record
    events: list[Event]
    last_motion: list[int | None]  # per token: the last step its row changed (None: never)
    frozen_from: dict[str, int | None]
    lineages: list[Hole]
    never_seen: dict | None
    trained_tokens: list[int] | None
    recording: str | None = None
    seconds: float = 0.0

    @property
    def partition_changes(self) -> list[int]:
        """Steps at which the partition differs from the previous record's."""
        diff = (self.group_ids[1:] != self.group_ids[:-1]).any(axis=1)
        return [int(s) for s in self.steps[1:][diff]]

    def group_ids_runs(self) -> list[dict]:
        """``group_ids`` as runs of records with one partition: ``{"from", "to", "group_ids"}``."""
        diff = np.flatnonzero((self.group_ids[1:] != self.group_ids[:-1]).any(axis=1)) + 1
        starts = np.r_[0, diff]
        ends = np.r_[diff - 1, len(self.steps) - 1]
        return [{"from": int(self.steps[a]), "to": int(self.steps[b]), "group_ids": self.group_ids[a].tolist()}
                for a, b in zip(starts, ends)]

    def to_json(self) -> dict:
        """The ``census`` JSON section (strict JSON: ``null`` for "none")."""
        largest_id = [None if g < 0 else int(g) for g in self.largest_id]
        return {
            "recording": self.recording,
            "shape": {"records": self.shape[0], "vocab": self.shape[1], "dim": self.shape[2]},
            "dtype": self.dtype,
            "identity": "raw bits, as scan: row.tobytes() equality",
            "group_ids_rule": "each token's group id is the smallest token id of its group (a singleton: its own)",
            "series": {
                "step": self.steps.tolist(), "distinct": self.distinct.tolist(), "holes": self.holes.tolist(),
                "tokens_in_holes": self.tokens_in_holes.tolist(), "largest": self.largest.tolist(),
                "largest_id": largest_id,
            },
            "partition_changes": self.partition_changes,
            "events": [e.to_json() for e in self.events],
            "last_motion": self.last_motion,
            "frozen_from": self.frozen_from,
            "holes": [h.to_json() for h in self.lineages],
            "never_seen": self.never_seen,
            "trained_tokens": self.trained_tokens,
            "group_ids": self.group_ids_runs(),
            "seconds": round(self.seconds, 4),
        }


# ---------------------------------------------------------------------------- API


def census(embeddings: np.ndarray, dtype: str, steps, *, never_seen=None, trained=None) -> Census:
    """The exact census of a recording's embeddings ``[records, V, D]`` (storage dtype,
    e.g. bf16 as uint16 bits; a memmap is read in chunks, never copied whole).

    ``steps``: the training step of each record (strictly increasing). ``never_seen``:
    token ids that never occur in the corpus (their set is followed). ``trained``: the
    tokens counted as trained (default: all but ``never_seen``; none without it).

    Holes are followed by **lineage**. At a record where the partition changed, each
    hole H of the previous record has an *heir*: the group now holding most of H's
    members (ties: smallest group id). If the heir is a single row, H *dissolved*.
    Each new hole takes as predecessor, among the old holes whose heir it is, the one
    giving it most members (ties: smallest old group id); the others are *absorbed*
    into it. A new hole without predecessor is *born* (origin ``split`` when its members
    were one group before, ``merger`` otherwise). A hole's phase at each later record:
    ``forming`` if its membership changed, else ``rigid`` if its vector changed any bit,
    else ``frozen``.

    >>> emb = np.zeros((3, 4, 2), np.uint16); emb[1:, 3] = 7; emb[2, :3] = 1
    >>> c = census(emb, "BF16", [0, 10, 20], never_seen=[0, 1, 2])
    >>> c.holes.tolist(), c.tokens_in_holes.tolist(), c.never_seen["one_point_all_steps"]
    ([1, 1, 1], [4, 3, 3], True)
    >>> [(h.members, h.phases) for h in c.lineages]
    [([0, 1, 2], [('forming', 10, 10), ('rigid', 20, 20)])]
    """
    t0 = time.perf_counter()
    emb, steps = _check_input(embeddings, dtype, steps)
    group_ids, changed = partitions(emb)
    return census_of_partitions(group_ids, changed, steps, shape=emb.shape, dtype=dtype, never_seen=never_seen,
                                trained=trained, started=t0)


def census_of_partitions(group_ids: np.ndarray, changed: np.ndarray, steps, *, shape, dtype: str,
                         never_seen=None, trained=None, started: float | None = None) -> Census:
    """The census of any ordered series of matrices, given each one's partition.

    ``group_ids`` (int [R, V]): at each record, every token's group as the smallest token
    id of its group of bit-identical rows; ``changed`` (bool [R, V]): whether a token's row
    changed any bit since the record before (row 0: since whatever came before the series,
    all False when nothing did). A recording's :func:`census` computes both in one pass;
    ``blackholes history`` from one checkpoint at a time. Everything else (events,
    lineages, last motion, freezes) is decided here, the same way for both.

    >>> ids = np.array([[0, 0, 0], [0, 1, 1]]); moved = np.array([[0, 0, 0], [0, 1, 1]], bool)
    >>> c = census_of_partitions(ids, moved, [0, 5], shape=(2, 3, 4), dtype="F32")
    >>> [(e.kind, e.step, e.after) for e in c.events], c.last_motion
    ([('fission', 5, [[0], [1, 2]])], [None, 5, 5])
    """
    t0 = time.perf_counter() if started is None else started
    group_ids = np.ascontiguousarray(group_ids, dtype=np.int32)
    changed = np.asarray(changed, dtype=bool)
    steps = np.asarray(steps, dtype=np.int64)
    R, V = group_ids.shape
    ns = _token_set(never_seen, V, "never_seen")
    tr = _token_set(trained, V, "trained")
    if tr is None and ns is not None:
        tr = [t for t in range(V) if t not in set(ns)]
    series = census_series(group_ids)
    events, lineages = _follow(group_ids, changed, steps, set(ns or ()))
    last_record = _last_change(changed)
    final_holes = np.flatnonzero(np.bincount(group_ids[-1], minlength=V)[group_ids[-1]] >= 2)
    frozen = {"matrix": _frozen_from(last_record, np.arange(V), steps),
              "holes": _frozen_from(last_record, final_holes, steps),
              "trained": _frozen_from(last_record, tr, steps) if tr is not None else None,
              "never_seen": _frozen_from(last_record, ns, steps) if ns is not None else None}
    return Census(
        shape=tuple(int(x) for x in shape), dtype=dtype, steps=steps, group_ids=group_ids,
        changed=changed, events=events, lineages=lineages,
        last_motion=[None if r < 0 else int(steps[r]) for r in last_record],
        frozen_from=frozen, never_seen=_never_seen_summary(group_ids, steps, ns, lineages),
        trained_tokens=tr, seconds=time.perf_counter() - t0, **series,
    )


def census_of_recording(path: str | os.PathLike, *, key: str = "embeddings", never_seen=None,
                        trained=None) -> Census:
    """:func:`census` of a recording written by ``blackholes train`` (memory-mapped).

    Steps come from the ``steps`` metadata (else record *i* is step *i*); ``never_seen``
    defaults to the recording's ``never_seen`` metadata.

    >>> c = census_of_recording("run.safetensors")        # doctest: +SKIP
    >>> c.frozen_from["holes"], len(c.events)              # doctest: +SKIP
    """
    from blackholes.io.safetensors import open_tensor, read_header
    from blackholes.io.recording import decode_metadata

    header = read_header(path)
    if key not in header.tensors:
        keys = ", ".join(sorted(header.tensors)) or "(none)"
        raise BlackholesError(f"not a training recording: no {key!r} tensor in {header.path} (it has: {keys})")
    info = header.tensors[key]
    if len(info.shape) != 3:
        raise BlackholesError(f"{key!r} must be [steps, vocab, dim], got shape {list(info.shape)} in {path}")
    emb = open_tensor(path, key, header)
    meta = decode_metadata(header.metadata)
    steps = meta.get("steps")
    if steps is None:
        steps = np.arange(info.shape[0])
    elif not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise BlackholesError(f"recording metadata 'steps' must be a list of integer training steps: {path}")
    if never_seen is None and isinstance(meta.get("never_seen"), list):
        never_seen = meta["never_seen"]
    result = census(emb, info.dtype, steps, never_seen=never_seen, trained=trained)
    result.recording = str(path)
    return result


# ---------------------------------------------------------------------------- checks


def _check_input(embeddings, dtype: str, steps) -> tuple[np.ndarray, np.ndarray]:
    """The array and its steps, or a one-line refusal."""
    emb = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if dtype not in STORAGE_DTYPES:
        raise BlackholesError(f"unknown dtype {dtype!r}; one of {', '.join(STORAGE_DTYPES)}")
    if emb.ndim != 3:
        raise BlackholesError(f"embeddings must be [steps, vocab, dim], got shape {list(emb.shape)}")
    if emb.dtype.itemsize != STORAGE_DTYPES[dtype].itemsize:
        raise BlackholesError(f"a {emb.dtype} array cannot hold {dtype} values")
    R, V, D = emb.shape
    if V < 1 or D < 1:
        raise BlackholesError(f"the recording is empty (embeddings shape {list(emb.shape)})")
    if R < 2:
        raise BlackholesError(f"a census needs at least 2 recorded steps; this recording has {R}")
    try:
        st = np.asarray(steps)
    except (TypeError, ValueError):
        raise BlackholesError("the recorded steps must be a list of integers") from None
    if st.ndim != 1 or len(st) != R:
        raise BlackholesError(f"{len(st) if st.ndim == 1 else 'a non-list of'} recorded steps for {R} records; "
                              "need one step per record")
    if st.dtype.kind not in "iu":
        raise BlackholesError("the recorded steps must be integers")
    st = st.astype(np.int64)
    bad = np.flatnonzero(np.diff(st) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise BlackholesError(f"the recorded steps must increase: record {i} is step {st[i]}, "
                              f"after step {st[i - 1]}")
    return emb, st


def _token_set(tokens, vocab: int, what: str) -> list[int] | None:
    """Sorted unique token ids, each inside the vocabulary (None stays None)."""
    if tokens is None:
        return None
    out = set()
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < vocab:
            raise BlackholesError(f"{what}: token id {t!r} is not in the vocabulary (0-{vocab - 1})")
        out.add(int(t))
    return sorted(out)


# ---------------------------------------------------------------------------- the partition, every record


def partitions(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``group_ids`` (int32 [R, V], smallest member) and ``changed`` (bool [R, V]) in one pass."""
    R, V = emb.shape[:2]
    width = emb.dtype.itemsize * int(np.prod(emb.shape[2:]))
    group_ids = np.empty((R, V), np.int32)
    changed = np.zeros((R, V), bool)
    per = max(1, CHUNK_BYTES // (V * width))
    prev_words, prev_ids = None, None
    for a in range(0, R, per):
        b = min(R, a + per)
        block = _byte_block(emb[a:b])  # [c, V, width] uint8
        words = _words(block)
        if prev_words is not None:
            changed[a] = (words[0] != prev_words).any(axis=1)
        changed[a + 1 : b] = (words[1:] != words[:-1]).any(axis=2)
        active = changed[a:b].any(axis=1)
        if a == 0:
            active[0] = True  # record 0 has no predecessor to copy
        idx = np.flatnonzero(active)
        ids = _group_records(block if len(idx) == b - a else block[idx])
        # a record where no row changed has exactly its predecessor's partition:
        # prepend the previous chunk's last partition and fill forward
        known = ids if prev_ids is None else np.concatenate([prev_ids[None], ids])
        last = np.cumsum(active) - (1 if prev_ids is None else 0)
        filled = known[last]
        group_ids[a:b] = filled
        prev_words, prev_ids = words[-1], filled[-1]
    return group_ids, changed


def _byte_block(block) -> np.ndarray:
    """[c, V, ...] records as a C-contiguous [c, V, row_bytes] uint8 view (a copy only if needed)."""
    block = np.ascontiguousarray(block)
    return block.view(np.uint8).reshape(block.shape[0], block.shape[1], -1)


def _words(block: np.ndarray) -> np.ndarray:
    """The widest unsigned view of byte rows, for fast exact comparison."""
    width = block.shape[2]
    for size, dt in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if width % size == 0:
            return block.view(dt)
    return block


def _group_records(block: np.ndarray) -> np.ndarray:
    """Canonical group ids (int32 [n, V]) of n records [n, V, width] at once: hash, sort, verify."""
    n, V, width = block.shape
    if n == 0:
        return np.empty((0, V), np.int32)
    h = np.asarray(hash_rows(block.reshape(n * V, width))).reshape(n, V)
    return _grouped(block, h)


def row_groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One matrix's partition and per-row digests, in one pass over its bytes.

    ``rows``: a 2-D matrix (any dtype; bit identity of its rows). Returns the group ids
    (int32 [V], each token's smallest fellow member, as ``group_ids`` of a census) and a
    128-bit digest per row (uint64 [V, 2]): the census's row hash of the bytes, and the same
    hash of the row's 8-byte words each passed through an xorshift. Groups are exact (hash, sort, then byte comparison, as
    :func:`census`); the digests let two matrices read at different times be compared row by
    row without holding both: a row whose digest differs changed, and a change confined to one
    8-byte word always changes the first half (its multiplier is odd).

    >>> ids, digests = row_groups(np.array([[1, 2], [3, 4], [1, 2]], np.float32))
    >>> ids.tolist(), bool((digests[0] == digests[2]).all()), bool((digests[0] == digests[1]).all())
    ([0, 1, 0], True, False)
    """
    if rows.ndim != 2:
        raise BlackholesError(f"expected a 2-D matrix, got shape {list(rows.shape)}")
    data = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)
    V, width = data.shape
    digests = np.empty((V, 2), np.uint64)
    per = max(1, (1 << 20) // max(width, 1))  # ~1 MiB at a time: the products stay in cache
    words = width % 8 == 0
    mixed = np.empty((per, width // 8) if words else (per, width), np.uint64 if words else np.uint8)
    for a in range(0, V, per):
        chunk = data[a : a + per]
        digests[a : a + per, 0] = hash_rows(chunk)
        digests[a : a + per, 1] = hash_rows(_mixed(chunk, mixed[: len(chunk)]))
    ids = _grouped(data[None], np.ascontiguousarray(digests[:, 0])[None])[0]
    return ids, digests


def _mixed(chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The rows' 8-byte words through xorshift (a bijection, not linear mod 2**64), as byte rows:
    the row hash of these is the digest's second, independent half."""
    if out.dtype == np.uint8:  # rows not a whole number of words: bytes reversed instead
        out[:] = chunk[:, ::-1]
        return out
    w = chunk.view(np.uint64)
    np.right_shift(w, np.uint64(29), out=out)
    np.bitwise_xor(out, w, out=out)
    return out.view(np.uint8)


def _grouped(block: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Canonical group ids of records [n, V, width] whose row hashes ``h`` [n, V] are known."""
    n, V, _ = block.shape
    order = np.argsort(h, axis=1, kind="stable")  # stable: within a run of one hash, ids ascend
    sh = np.take_along_axis(h, order, axis=1)
    first = np.ones((n, V), bool)
    first[:, 1:] = sh[:, 1:] != sh[:, :-1]
    run_start = np.where(first, np.arange(V), 0)
    np.maximum.accumulate(run_start, axis=1, out=run_start)
    ids = np.empty((n, V), np.int32)
    np.put_along_axis(ids, order, np.take_along_axis(order, run_start, axis=1).astype(np.int32), axis=1)
    # verify: every row must equal its group's first row, byte for byte
    r, v = np.nonzero(ids != np.arange(V, dtype=np.int32))
    if len(r):
        words = _words(block)
        same = (words[r, v] == words[r, ids[r, v]]).all(axis=1)
        for i in np.unique(r[~same]):  # a hash collision joined different rows: regroup exactly
            ids[i] = _exact_ids(block[i])
    return ids


def _exact_ids(rows: np.ndarray) -> np.ndarray:
    """Group ids of one record's byte rows [V, width] by sorting the raw bytes (no hash)."""
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int32)  # first occurrence = smallest member


def census_series(group_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-record counts from the partition: distinct vectors, holes, their tokens, the largest."""
    R, V = group_ids.shape
    flat = (np.arange(R, dtype=np.int64)[:, None] * V + group_ids).ravel()
    sizes = np.bincount(flat, minlength=R * V).reshape(R, V)  # sizes[r, g]: members of group g
    in_hole = np.where(sizes >= 2, sizes, 0)
    largest = in_hole.max(axis=1)
    return {
        "distinct": (sizes > 0).sum(axis=1),
        "holes": (sizes >= 2).sum(axis=1),
        "tokens_in_holes": in_hole.sum(axis=1),
        "largest": largest,
        "largest_id": np.where(largest > 0, in_hole.argmax(axis=1), -1),  # argmax: first = smallest id
    }


def _last_change(changed: np.ndarray) -> np.ndarray:
    """Per token, the last record whose row differs from the record before (-1: never)."""
    R = changed.shape[0]
    last = R - 1 - np.argmax(changed[::-1], axis=0)
    return np.where(changed.any(axis=0), last, -1)


def _frozen_from(last_record: np.ndarray, tokens, steps: np.ndarray) -> int | None:
    """The step from which none of ``tokens`` changes any bit through the last record.

    None when one of them changed at the last record, or there are no tokens. Rows
    that never changed are frozen from the first update (the second record).
    """
    tokens = np.asarray(tokens, dtype=np.intp)
    if tokens.size == 0:
        return None
    last = int(last_record[tokens].max())
    if last == len(steps) - 1:
        return None
    return int(steps[max(last, 0) + 1])


# ---------------------------------------------------------------------------- events and lineages


def _follow(group_ids: np.ndarray, changed: np.ndarray, steps: np.ndarray, never_seen: set[int]):
    """Events and hole lineages: work only at the records where the partition changed."""
    R, V = group_ids.shape
    book = _Lineages(steps, changed)
    book.start(group_ids[0])
    events: list[Event] = []
    at = np.flatnonzero((group_ids[1:] != group_ids[:-1]).any(axis=1)) + 1
    for r in at:
        old, new = group_ids[r - 1], group_ids[r]
        events += _events_at(int(r), int(steps[r]), old, new, never_seen)
        book.advance(int(r), old, new)
    return events, book.finish()


def _parts(members: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """``members`` split by ``labels`` (their group elsewhere), parts ordered by smallest id."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    return [members[inverse == k].tolist() for k in order]


def _events_at(r: int, step: int, old: np.ndarray, new: np.ndarray, never_seen: set[int]) -> list[Event]:
    """The fissions and mergers between partitions ``old`` (record r-1) and ``new`` (record r)."""
    V = len(old)
    pairs = np.unique(old.astype(np.int64) * V + new)
    po, pn = pairs // V, pairs % V
    split = np.flatnonzero(np.bincount(po, minlength=V) > 1)  # old groups now at several points
    joined = np.flatnonzero(np.bincount(pn, minlength=V) > 1)  # new groups from several points
    out = []
    for g in split:
        members = np.flatnonzero(old == g)
        out.append(Event("fission", step, r, members.tolist(), _parts(members, new[members]),
                         bool(never_seen.intersection(members.tolist()))))
    for g in joined:
        members = np.flatnonzero(new == g)
        out.append(Event("merger", step, r, _parts(members, old[members]), members.tolist(),
                         bool(never_seen.intersection(members.tolist()))))
    return out


class _Lineages:
    """Bookkeeping of hole lineages; between partition changes a hole keeps its group id."""

    def __init__(self, steps: np.ndarray, changed: np.ndarray):
        self.steps, self.changed = steps, changed
        self.alive: dict[int, int] = {}  # group id -> lineage index
        self.info: list[dict] = []  # per lineage: born, origin, members, segments, end

    def _birth(self, r: int, members: np.ndarray, origin: str) -> int:
        """A new lineage born at record ``r``; returns its index."""
        g = int(members[0])
        self.info.append({"born": r, "origin": origin, "birth_members": members.tolist(),
                          "segments": [[g, r, None]], "end": "alive", "into": None, "members": members.tolist()})
        return len(self.info) - 1

    def start(self, ids: np.ndarray) -> None:
        for g in _hole_ids(ids):
            self.alive[int(g)] = self._birth(0, np.flatnonzero(ids == g), "initial")

    def advance(self, r: int, old: np.ndarray, new: np.ndarray) -> None:
        """Apply the lineage rules of :func:`census` at record ``r``."""
        new_sizes = np.bincount(new, minlength=len(new))
        claims: dict[int, list[tuple[int, int, int]]] = {}  # new hole -> [(-count, old id, lineage)]
        for g, k in sorted(self.alive.items()):
            heirs, counts = np.unique(new[old == g], return_counts=True)
            heir = int(heirs[np.argmax(counts)])  # most members; ties: smallest id
            if new_sizes[heir] < 2:
                self._end(k, r, "dissolved")
            else:
                claims.setdefault(heir, []).append((-int(counts.max()), g, k))
        alive: dict[int, int] = {}
        for h in _hole_ids(new):
            h = int(h)
            members = np.flatnonzero(new == h)
            if h not in claims:
                origin = "split" if len(np.unique(old[members])) == 1 else "merger"
                alive[h] = self._birth(r, members, origin)
                continue
            ranked = sorted(claims[h])  # most members first; ties: smallest old id
            k = ranked[0][2]
            for _, _, other in ranked[1:]:
                self._end(other, r, "absorbed", into=k)
            if self.info[k]["members"] != members.tolist():  # forming: a new membership segment
                self.info[k]["segments"][-1][2] = r - 1
                self.info[k]["segments"].append([h, r, None])
                self.info[k]["members"] = members.tolist()
            alive[h] = k
        self.alive = alive

    def _end(self, k: int, r: int, why: str, into: int | None = None) -> None:
        self.info[k]["segments"][-1][2] = r - 1
        self.info[k]["end"], self.info[k]["into"] = why, into

    def finish(self) -> list[Hole]:
        """Close the open lineages and build the :class:`Hole` list (ids in birth order)."""
        R = len(self.steps)
        for k in self.alive.values():
            self.info[k]["segments"][-1][2] = R - 1
        order = sorted(range(len(self.info)), key=lambda k: (self.info[k]["born"], self.info[k]["birth_members"][0]))
        number = {k: i + 1 for i, k in enumerate(order)}
        return [self._hole(k, number) for k in order]

    def _hole(self, k: int, number: dict[int, int]) -> Hole:
        info = self.info[k]
        codes, first = self._phase_codes(info["segments"])
        phases = _runs(codes, self.steps[first:first + len(codes)])
        last = info["segments"][-1][2]
        frozen = phases[-1][1] if info["end"] == "alive" and phases and phases[-1][0] == "frozen" else None
        counts = np.bincount(codes, minlength=len(PHASES)) if len(codes) else np.zeros(len(PHASES), int)
        return Hole(id=number[k], born=int(self.steps[info["born"]]), origin=info["origin"],
                    last_seen=int(self.steps[last]), end=info["end"],
                    absorbed_into=None if info["into"] is None else number[info["into"]],
                    members_at_birth=info["birth_members"], members=info["members"], phases=phases,
                    frozen_from=frozen, phase_counts={p: int(n) for p, n in zip(PHASES, counts)})

    def _phase_codes(self, segments: list) -> tuple[np.ndarray, int]:
        """Phase code of every transition after the birth record, and the first such record."""
        born = segments[0][1]
        codes = []
        for i, (g, a, b) in enumerate(segments):
            lo = a if i else a + 1  # a later segment begins with the membership change
            moved = self.changed[lo : b + 1, g]
            seg = np.where(moved, _RIGID, _FROZEN)
            if i:
                seg[0] = _FORMING
            codes.append(seg)
        return (np.concatenate(codes) if codes else np.zeros(0, int)), born + 1


def _hole_ids(ids: np.ndarray) -> np.ndarray:
    """Group ids of the groups with two or more members, ascending."""
    return np.flatnonzero(np.bincount(ids, minlength=len(ids)) >= 2)


def _runs(codes: np.ndarray, steps: np.ndarray) -> list[tuple[str, int, int]]:
    """Run-length encode phase codes into ``(phase, first_step, last_step)``."""
    if len(codes) == 0:
        return []
    cut = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts, ends = np.r_[0, cut], np.r_[cut - 1, len(codes) - 1]
    return [(PHASES[codes[a]], int(steps[a]), int(steps[b])) for a, b in zip(starts, ends)]


def _never_seen_summary(group_ids: np.ndarray, steps: np.ndarray, ns: list[int] | None,
                        lineages: list[Hole]) -> dict | None:
    """Does the never-seen set stay one point, and who else shares it?"""
    if ns is None or not ns:
        return None
    ids = group_ids[:, ns]
    one = (ids == ids[:, :1]).all(axis=1)
    sizes = (group_ids == ids[:, :1]).sum(axis=1)
    alone = one & (sizes == len(ns))  # the point holds exactly the never-seen set
    final = np.flatnonzero(group_ids[-1] == ids[-1, 0])
    not_alone = np.flatnonzero(~alone)
    return {
        "tokens": ns,
        "one_point_all_steps": bool(one.all()),
        "first_apart": None if one.all() else int(steps[np.argmin(one)]),
        "alone_from": None if not alone[-1] else int(steps[not_alone[-1] + 1 if not_alone.size else 0]),
        "others_at_end": [int(t) for t in final if t not in set(ns)],
        "hole_at_end": next((h.id for h in lineages if h.end == "alive" and ns[0] in h.members), None),
    }
