"""The search behind :func:`blackholes.analysis.near.near_clusters`: which rows lie within k ULPs.

Rows are read as integer grid keys (:mod:`blackholes.io.dtypes`), cut into cells along
split coordinates until every cell is small, and the candidate pairs of each cell are
checked exactly; joined rows are kept in a union-find. Nothing here decides nearness
from a float distance. The tuning constants below trade memory for passes; none of
them changes a result.
"""

from __future__ import annotations

import time

import numpy as np

from blackholes.io.dtypes import (
    FLOAT_FORMATS,
    grid_keys,
    key_distance,
    key_range,
    to_float64,
    to_grid_bits,
)

LEAF_ROWS = 16  # cells this small have all their pairs checked
PROBES = 32  # split coordinates whose keys are held in memory for every row
SAMPLE_ROWS = 1024  # rows read whole to choose split coordinates
WINDOW_BYTES = 256  # the probes come from one run of adjacent columns this wide, when good enough
WINDOWS = 4  # windows scored for the probes
PAY = 0.5  # a split column must leave at most this fraction of a cell's pairs sharing a child
ENTRY_FACTOR = 8  # at most this many copies of each row across a split's cells
MAX_DEPTH = 4  # rounds of fresh split coordinates for a cell that stays large
PAIR_BLOCK = 1 << 20  # candidate pairs handled at a time
DENSE_ROWS = 64  # rows of a settled cell checked against the rest at a time (then joined pairs are skipped)
BLOCK_VALUES = 1 << 21  # keys read at a time when checking pairs / summarising clusters (x 8 bytes)




# ---------------------------------------------------------------------------- reading keys


class Rows:
    """Grid keys and values of a matrix's rows, read in bounded blocks."""

    def __init__(self, array: np.ndarray, dtype: str, grid: str):
        self.array, self.dtype, self.grid = array, dtype, grid
        self.n, self.d = int(array.shape[0]), int(array.shape[1])
        self.low, self.high = key_range(grid)

    def keys(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), D] keys of whole rows (int32, int64 for an F64 grid)."""
        return grid_keys(np.asarray(self.array[np.asarray(rows)]), self.dtype, self.grid)

    def values(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), D] float64 values, on the grid (exact)."""
        return to_float64(to_grid_bits(np.asarray(self.array[np.asarray(rows)]), self.dtype, self.grid), self.grid)

    def columns(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[len(rows), len(cols)] keys of a few columns; ``rows`` sorted ascending.

        Columns close together are read as one slice of each row (a few cache lines).
        """
        out = np.empty((len(rows), len(cols)), np.int64 if self.grid == "F64" else np.int32)
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        near = c1 - c0 <= 4 * len(cols)
        step = max(1, BLOCK_VALUES // max(1, c1 - c0 if near else len(cols)))
        for lo in range(0, len(rows), step):
            r = rows[lo : lo + step]
            block = self.array[int(r[0]) : int(r[-1]) + 1]  # a view: only the wanted cells are read
            if near:
                part = block[:, c0:c1] if len(r) == len(block) else block[r - r[0], c0:c1]
                part = np.asarray(part)[:, cols - c0]
            else:
                part = np.asarray(block[np.ix_(r - r[0], cols)])
            out[lo : lo + len(r)] = grid_keys(part, self.dtype, self.grid)
        return out

    def nan_rows(self, keys: np.ndarray) -> np.ndarray:
        return ((keys > self.high) | (keys < self.low)).any(axis=1)

    def block_rows(self, width: int | None = None) -> int:
        return max(1, BLOCK_VALUES // max(1, width or self.d))


def representatives(n: int, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One row per distinct vector (each hole's first row), sorted; and the hole of each (-1: none)."""
    keep = np.ones(n, dtype=bool)
    hole = np.full(n, -1, dtype=np.int64)
    for i, g in enumerate(groups):
        keep[g[1:]] = False
        hole[g[0]] = i
    reps = np.flatnonzero(keep)
    return reps, hole[reps]


class Clock:
    """``clock(name)`` adds the seconds since the last call to ``into[name]``."""

    def __init__(self, into: dict):
        self.into, self.last = into, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(self.into.get(name, 0.0) + now - self.last, 4)
        self.last = now


# ---------------------------------------------------------------------------- union-find


class UnionFind:
    """Connected components over 0..n-1, joined a batch of edges at a time (vectorised)."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        p = self.parent
        r = p[x]
        while True:
            rr = p[r]
            if np.array_equal(rr, r):
                return r
            r = rr

    def _compress(self) -> None:
        p = self.parent
        while True:
            pp = p[p]
            if np.array_equal(pp, p):
                break
            p = pp
        self.parent = p

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join every edge (a[i], b[i]). Roots only ever point to smaller ids, so no cycles."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        while len(a):
            ra, rb = self.find(a), self.find(b)
            cross = ra != rb
            a, b, ra, rb = a[cross], b[cross], ra[cross], rb[cross]
            if not len(a):
                break
            np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))
        self._compress()

    def union_star(self, members: np.ndarray) -> None:
        """Join all ``members`` into one component."""
        if len(members) > 1:
            self.union(np.full(len(members) - 1, members[0]), members[1:])

    def labels(self) -> np.ndarray:
        self._compress()
        return self.parent


# ---------------------------------------------------------------------------- splitting


def _split_column(rows: np.ndarray, cells: np.ndarray, key: np.ndarray, k: int,
                  grids: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cut every cell along one coordinate: wherever its sorted keys jump by more than k
    (free), then, when ``grids``, by the two shifted grids (see the module doc).

    ``rows`` local row indices, ``cells`` their sorted cell ids (0..C-1), ``key`` their keys
    in this coordinate. Returns the surviving children's (rows ascending within each
    child, sorted child ids 0..C'-1).
    """
    rows, cells, key = _split_gaps(rows, cells, key.astype(np.int64), k)
    if not len(rows):
        return rows, cells
    if grids:
        return _split_grids(rows, cells, key, k + 1)
    row_bits = max(1, int(rows.max()).bit_length())
    packed = np.sort((cells << row_bits) | rows)  # rows ascending within each cell
    return packed & ((1 << row_bits) - 1), packed >> row_bits


def _split_gaps(rows: np.ndarray, cells: np.ndarray, key: np.ndarray, k: int):
    """Partition each cell where its sorted keys jump by more than k: a near pair never
    straddles such a jump (every step between its two keys is at most k). No row is copied."""
    low = int(key.min())
    span = int(key.max()) - low + 1
    count = int(cells[-1]) + 1
    row_bits = max(1, int(rows.max()).bit_length())
    if (count * span).bit_length() + row_bits <= 62:  # one sort of (cell, key, row) packed in an integer
        packed = np.sort(((cells * span + (key - low)) << row_bits) | rows)
        rows, high = packed & ((1 << row_bits) - 1), packed >> row_bits
        cells, key = high // span, high % span + low
    else:
        order = np.argsort(cells * span + (key - low)) if count * span < (1 << 62) else np.lexsort((key, cells))
        rows, cells, key = rows[order], cells[order], key[order]
    # key[:-1] + k cannot overflow for non-NaN keys; a wrapped NaN key only splits NaNs off
    run = np.cumsum(np.r_[True, (cells[1:] != cells[:-1]) | (key[1:] > key[:-1] + k)]) - 1
    keep = np.bincount(run)[run] >= 2  # one-row runs hold no pair
    return rows[keep], _dense_ids(run[keep]), key[keep]


def _split_grids(rows: np.ndarray, cells: np.ndarray, key: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every cell by the two grids of buckets 2w wide, the second shifted by w."""
    key = key.astype(np.int64)
    first, second = key // (2 * w), (key + w) // (2 * w)
    low = min(int(first.min()), int(second.min()))
    span = max(int(first.max()), int(second.max())) - low + 1
    cell_count = int(cells[-1]) + 1  # cells come sorted
    # one integer per (cell, grid, bucket): children are its runs
    group = np.concatenate([(cells * 2) * span + (first - low), (cells * 2 + 1) * span + (second - low)]) \
        if 2 * cell_count * span < (1 << 62) else None
    rows2 = np.concatenate([rows, rows])
    row_bits = max(1, int(rows.max()).bit_length())
    if group is not None and (2 * cell_count * span).bit_length() + row_bits <= 62:
        packed = np.sort((group << row_bits) | rows2)  # rows in the low bits: ascending within a child
        group, rows2 = packed >> row_bits, packed & ((1 << row_bits) - 1)
    else:  # very wide key ranges (F64): sort by the three parts
        bucket = np.concatenate([first, second])
        order = np.lexsort((bucket, np.repeat(np.array([0, 1], np.int8), len(rows)), np.concatenate([cells, cells])))
        group = np.stack([np.concatenate([cells, cells])[order] * 2 + np.repeat([0, 1], len(rows))[order],
                          bucket[order]], axis=1)
        rows2 = rows2[order]
    new = np.r_[True, (group[1:] != group[:-1]).reshape(len(group) - 1, -1).any(axis=1)]
    child = np.cumsum(new) - 1
    child_size = np.bincount(child)
    child_parent = (group[new] // (2 * span)) if group.ndim == 1 else group[new][:, 0] // 2
    full = child_size == np.bincount(cells)[child_parent]
    # A child holding its whole parent holds every pair of it: keep that one child alone.
    has_full = np.zeros(int(cells.max()) + 1, dtype=bool)
    has_full[child_parent[full]] = True
    keep = (child_size >= 2) & ~has_full[child_parent]
    full_ids = np.flatnonzero(full)
    _, first = np.unique(child_parent[full_ids], return_index=True)
    keep[full_ids[first]] = True
    relabel = np.cumsum(keep) - 1
    mask = keep[child]
    return rows2[mask], relabel[child[mask]]


def _split_cells(keys: np.ndarray, k: int, grids: np.ndarray | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Split rows 0..len(keys)-1 along keys' columns in order until cells are small.

    ``grids[c]``: whether column c is also cut by the shifted grids (default: every column).

    Returns (leaf rows, leaf cell ids) for cells of at most LEAF_ROWS rows, and the
    cells still larger after every column (local row indices).
    """
    n = len(keys)
    rows, cells = np.arange(n), np.zeros(n, np.int64)
    leaf_rows, leaf_cells, done = [], [], 0
    for c in range(keys.shape[1] + 1):
        if not len(rows):
            break
        size = np.bincount(cells)
        small = size[cells] <= LEAF_ROWS
        if small.any():
            leaf_rows.append(rows[small])
            leaf_cells.append(_dense_ids(cells[small]) + done)
            done = int(leaf_cells[-1][-1]) + 1
            rows, cells = rows[~small], _dense_ids(cells[~small])
        if not len(rows) or c == keys.shape[1]:
            break
        rows, cells = _drop_repeated_cells(rows, cells)
        # the grids copy rows: past ENTRY_FACTOR copies per row, only free cuts (memory stays bounded)
        cut_grids = (True if grids is None else bool(grids[c])) and 2 * len(rows) <= ENTRY_FACTOR * n
        rows, cells = _split_column(rows, cells, keys[rows, c], k, cut_grids)
    big = []
    if len(rows):
        order = np.argsort(cells, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cells[order]) != 0])
        big = [np.sort(part) for part in np.split(rows[order], starts[1:])]
    if leaf_rows:
        return np.concatenate(leaf_rows), np.concatenate(leaf_cells), big
    return np.zeros(0, np.int64), np.zeros(0, np.int64), big


def _dense_ids(ids: np.ndarray) -> np.ndarray:
    """Relabel sorted ids 0, 1, 2, ... (equal ids stay equal)."""
    if not len(ids):
        return ids
    return np.cumsum(np.r_[True, ids[1:] != ids[:-1]]) - 1


def _drop_repeated_cells(rows: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep one copy of cells holding exactly the same rows (overlapping grids make copies).

    ``cells`` come sorted (each cell contiguous, its rows ascending). Cells are matched by
    (size, a 64-bit hash of their rows) and then compared row by row, so only true copies go.
    """
    if not len(rows):
        return rows, cells
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    size = np.diff(np.r_[starts, len(cells)])
    digest = np.add.reduceat(_mix64(rows), starts)
    order = np.lexsort((digest, size))
    same = (size[order][1:] == size[order][:-1]) & (digest[order][1:] == digest[order][:-1])
    if not same.any():
        return rows, cells
    keep = np.ones(len(starts), dtype=bool)
    run_starts = np.flatnonzero(np.r_[True, ~same])
    for run in np.split(order, run_starts[1:]):
        if len(run) < 2:
            continue
        kept: list[np.ndarray] = []
        for cell in run:
            members = rows[starts[cell] : starts[cell] + size[cell]]
            if any(np.array_equal(members, other) for other in kept):
                keep[cell] = False
            else:
                kept.append(members)
    mask = keep[cells]
    return rows[mask], (np.cumsum(keep) - 1)[cells[mask]]


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of integers: a well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _cell_pairs(rows: np.ndarray, cells: np.ndarray):
    """Every pair (i < j) of rows sharing a cell, in chunks of about PAIR_BLOCK pairs
    (a pair in several cells of one chunk comes once)."""
    order = np.argsort(cells, kind="stable")
    rows, cells = rows[order], cells[order]
    if not len(cells):
        return
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    sizes = np.diff(np.r_[starts, len(cells)])
    total = np.cumsum(sizes * (sizes - 1) // 2)
    cut = np.searchsorted(total, np.arange(PAIR_BLOCK, int(total[-1]) + PAIR_BLOCK, PAIR_BLOCK), side="right")
    for a, b in zip(np.r_[0, cut[:-1]], cut):
        if b > a:
            yield _pairs_of(rows, starts[a:b], sizes[a:b])


def _pairs_of(rows: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs within the cells rows[start : start + size], without repeats."""
    codes = []
    for s in np.unique(sizes):
        if s < 2:
            continue
        members = rows[starts[sizes == s][:, None] + np.arange(s)]
        iu, ju = np.triu_indices(int(s), 1)
        a, b = members[:, iu].ravel(), members[:, ju].ravel()
        codes.append(np.minimum(a, b) * (1 << 31) + np.maximum(a, b))
    if not codes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    code = np.sort(np.concatenate(codes))
    code = code[np.r_[True, code[1:] != code[:-1]]]  # the same pair from several cells: once
    return code >> 31, code & ((1 << 31) - 1)


def _collisions(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a sample's keys: pairs left sharing a child by the two grids (both
    together), whether the grids split the sample at all (both of them), and pairs left
    sharing a run between jumps of more than k."""
    s, d = keys.shape
    w = k + 1
    score, gap = np.zeros(d, np.int64), np.zeros(d, np.int64)
    splits = np.ones(d, dtype=bool)
    step = max(1, BLOCK_VALUES // (4 * s))  # columns at a time: bounded temporaries
    for c0 in range(0, d, step):
        part = keys[:, c0 : c0 + step].astype(np.int64)
        width = part.shape[1]
        for shift in (0, w):
            bucket = np.sort((part + shift) // (2 * w), axis=0)
            new = np.ones((s, width), dtype=bool)
            new[1:] = bucket[1:] != bucket[:-1]
            score[c0 : c0 + width] += _pairs_in_runs(new)
            splits[c0 : c0 + width] &= new[1:].any(axis=0)
        ordered = np.sort(part, axis=0)
        new = np.ones((s, width), dtype=bool)
        new[1:] = ordered[1:] - ordered[:-1] > k
        gap[c0 : c0 + width] = _pairs_in_runs(new)
    return score, splits, gap


def _pairs_in_runs(new: np.ndarray) -> np.ndarray:
    """Per column of a [rows, columns] "a run starts here" mask (row 0 always True): the sum
    of C(run length, 2) over the column's runs."""
    s, width = new.shape
    starts = np.flatnonzero(new.T.ravel())  # column by column
    length = np.diff(np.r_[starts, s * width])
    return np.bincount(starts // s, weights=length * (length - 1) // 2, minlength=width).astype(np.int64)


# ---------------------------------------------------------------------------- finding the edges


class PairFinder:
    """Finds every near pair among the distinct vectors ``reps`` and joins them in ``uf``."""

    def __init__(self, rows: Rows, reps: np.ndarray, k: int):
        self.rows, self.reps, self.k = rows, reps, k
        self.uf = UnionFind(len(reps))
        self.narrow = FLOAT_FORMATS[rows.grid][0].itemsize <= 2
        self.probe = np.zeros((len(reps), 0), np.int32)
        self.stats = {"probe_columns": [], "probe_grids": 0, "leaf_pairs": 0, "pairs_checked": 0, "near_pairs": 0,
                      "clique_cells": 0, "dense_cells": 0, "dense_rows": 0, "seconds": {}}

    def run(self) -> None:
        everyone = np.arange(len(self.reps))
        if len(everyone) < 2:
            return
        clock = Clock(self.stats["seconds"])
        cols, grids = self._choose_probes(everyone)
        self.stats["probe_columns"] = cols.tolist()
        self.stats["probe_grids"] = int(grids.sum())
        clock("choose probes")
        self.probe = self.rows.columns(self.reps, cols) if len(cols) else self.probe
        clock("read probes")
        self._resolve(everyone, self.probe, cols, grids, depth=0)
        clock("split and check")

    def _sample_keys(self, members: np.ndarray) -> np.ndarray:
        """Whole-row keys of up to SAMPLE_ROWS of ``members`` (evenly spread), NaN rows left out."""
        take = np.unique(np.linspace(0, len(members) - 1, min(len(members), SAMPLE_ROWS)).astype(np.int64))
        keys = self.rows.keys(self.reps[members[take]])
        return keys[~self.rows.nan_rows(keys)]

    def _choose_probes(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first split columns, held for every row: the best of a few windows of adjacent
        columns (one slice of each row is cheap to read), else the best columns anywhere.
        Returns (columns, whether each is cut by the grids too)."""
        keys = self._sample_keys(members)
        if len(keys) < 2:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        d = keys.shape[1]
        width = min(d, max(PROBES, WINDOW_BYTES // self.rows.array.dtype.itemsize))
        best, best_rank = None, None
        for c0 in np.unique(np.linspace(0, d - width, WINDOWS).astype(np.int64)):
            cols = np.arange(c0, c0 + width)
            pick, grids, cost = self._rank_columns(keys[:, cols], frozenset(), cols)
            rank = (-int(grids.sum()), cost)  # most grid-paying columns, then fewest pairs left
            if len(pick) == min(PROBES, width) and (best_rank is None or rank < best_rank):
                best, best_rank = (pick, grids), rank
        if best is not None and best[1].sum() >= min(PROBES, width) // 2:
            return best
        return self._choose_columns(members, frozenset(), keys)

    def _choose_columns(self, members: np.ndarray, used: frozenset,
                        keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to PROBES fresh columns that split a sample of ``members`` (see _rank_columns)."""
        keys = self._sample_keys(members) if keys is None else keys
        if len(keys) < 2:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        # Rank a spread of 8 x PROBES columns first; all of them only when too few split.
        d = keys.shape[1]
        spread = np.unique(np.linspace(0, d - 1, min(d, 8 * PROBES)).astype(np.int64))
        for cols in (spread, np.arange(d)):
            pick, grids, _ = self._rank_columns(keys[:, cols], used, cols)
            if grids.sum() >= min(PROBES, len(cols)) or len(cols) == d:
                return pick, grids
        return pick, grids

    def _rank_columns(self, keys: np.ndarray, used: frozenset, cols: np.ndarray):
        """The best (up to PROBES) of ``cols`` for splitting the sample ``keys``: (columns,
        whether each is cut by the grids too, a cost to compare choices by).

        Every column is cut at its jumps of more than k (free). The grids copy each row into
        two children, so a column is cut by them only if the pairs they leave sharing a child
        are at most PAY of the pairs before (clouds of near-identical rows never pay: they are
        settled whole instead). Such columns come first, by that fraction: it does not depend
        on how densely the sample covers the data. Columns whose jumps alone split the sample
        fill the rest, by the pairs left (an estimate that the real rows then confirm or not).
        """
        score, splits, gap = _collisions(keys, self.k)
        fresh = ~np.isin(cols, list(used))
        pairs = max(1, len(keys) * (len(keys) - 1) // 2)
        pay = np.flatnonzero(splits & (score <= PAY * pairs) & fresh)
        pay = pay[np.argsort(score[pay], kind="stable")[:PROBES]]
        cut = np.flatnonzero((gap < pairs) & fresh & ~np.isin(np.arange(len(cols)), pay))
        cut = cut[np.argsort(gap[cut], kind="stable")[: PROBES - len(pay)]]
        best = np.r_[pay, cut].astype(np.int64)
        left = np.r_[score[pay], gap[cut]] / pairs
        return cols[best], np.r_[np.ones(len(pay), bool), np.zeros(len(cut), bool)], float(np.log1p(left).sum())

    def _resolve(self, members: np.ndarray, keys: np.ndarray, cols: np.ndarray, grids: np.ndarray,
                 depth: int, used: frozenset = frozenset()) -> None:
        """Split ``members`` (indices into reps) along ``keys`` (their keys in ``cols``).

        Cells left large get fresh columns: a column already used cannot shrink them (all
        their rows share one of its pieces).
        """
        leaf_rows, leaf_cells, big = _split_cells(keys, self.k, grids)
        for i, j in _cell_pairs(members[leaf_rows], leaf_cells):  # small cells: check every pair
            self.stats["leaf_pairs"] += len(i)
            self._join_near(i, j)
        used = used | set(cols.tolist())
        for part in big:
            self._large_cell(members[part], depth + 1, used)

    def _large_cell(self, members: np.ndarray, depth: int, used: frozenset) -> None:
        """A cell the split columns left large: fresh columns, else settle it whole."""
        if depth < MAX_DEPTH:
            cols, grids = self._choose_columns(members, used)
            if len(cols):
                keys = self.rows.columns(self.reps[members], cols)
                self._resolve(members, keys, cols, grids, depth, used)  # members sorted: reps rows ascend
                return
        self._settle(members)

    def _settle(self, members: np.ndarray) -> None:
        """A cell no column shrinks: a clique if its bounding box is within k, else every pair."""
        lo = hi = None
        alive = []
        step = self.rows.block_rows()
        for a in range(0, len(members), step):
            part = members[a : a + step]
            keys = self.rows.keys(self.reps[part]).astype(np.int64)
            ok = ~self.rows.nan_rows(keys)  # a row with a NaN is near nothing
            alive.append(part[ok])
            if ok.any():
                kmin, kmax = keys[ok].min(axis=0), keys[ok].max(axis=0)
                lo = kmin if lo is None else np.minimum(lo, kmin)
                hi = kmax if hi is None else np.maximum(hi, kmax)
        alive = np.concatenate(alive)
        if len(alive) < 2:
            return
        if int(key_distance(hi, lo).max()) <= self.k:
            self.stats["clique_cells"] += 1
            self.uf.union_star(alive)
            return
        self.stats["dense_cells"] += 1
        self.stats["dense_rows"] += len(alive)
        self._all_pairs(alive)

    def _all_pairs(self, members: np.ndarray) -> None:
        """Check every pair of ``members``, skipping pairs already joined (block by block)."""
        s = len(members)
        per = max(1, min(DENSE_ROWS, PAIR_BLOCK // s))
        for a in range(0, s - 1, per):
            i = np.arange(a, min(a + per, s - 1))
            counts = s - 1 - i
            ii = np.repeat(i, counts)
            jj = np.arange(len(ii)) - np.repeat(np.cumsum(counts) - counts, counts) + ii + 1
            gi, gj = members[ii], members[jj]
            apart = self.uf.find(gi) != self.uf.find(gj)
            self._join_near(gi[apart], gj[apart])

    def _join_near(self, i: np.ndarray, j: np.ndarray) -> None:
        """Join the pairs (indices into reps) that are within k ULPs in every coordinate."""
        # The held probe keys first: only far pairs fail there. The last probes, rarely used
        # for splitting, drop most far pairs, so they go first, alone.
        for probe in (self.probe[:, -4:], self.probe) if self.probe.shape[1] and len(i) else ():
            keep = np.ones(len(i), dtype=bool)
            step = max(1, BLOCK_VALUES // probe.shape[1])
            for a in range(0, len(i), step):
                x, y = probe[i[a : a + step]], probe[j[a : a + step]]
                keep[a : a + step] = _within(x, y, self.k, self.narrow).all(axis=1)
            i, j = i[keep], j[keep]
        self.stats["pairs_checked"] += len(i)
        near = np.zeros(len(i), dtype=bool)
        step = max(1, self.rows.block_rows() // 2)
        for a in range(0, len(i), step):
            near[a : a + step] = self._near(i[a : a + step], j[a : a + step])
        self.stats["near_pairs"] += int(near.sum())
        self.uf.union(i[near], j[near])

    def _near(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether each pair is within k in every coordinate, neither row holding a NaN."""
        need, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        keys = self.rows.keys(self.reps[need])
        bad = self.rows.nan_rows(keys)
        a, b = inverse[: len(i)], inverse[len(i) :]
        return _within(keys[a], keys[b], self.k, self.narrow).all(axis=1) & ~bad[a] & ~bad[b]


def _within(a: np.ndarray, b: np.ndarray, k: int, narrow: bool) -> np.ndarray:
    """``|a - b| <= k`` elementwise for grid keys, without overflow. ``narrow``: keys of a
    grid of 16 bits or less (int32 differences cannot overflow). NaN keys raise nothing;
    the caller excludes them."""
    if narrow:
        return np.abs(a - b) <= k
    if a.dtype == np.int32:
        return np.abs(a.astype(np.int64) - b) <= k
    return (a <= b + k) & (b <= a + k)  # int64 keys of non-NaN values are far from overflow
