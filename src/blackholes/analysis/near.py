"""Near-duplicate clusters ("halos") and the bit anatomy of black holes.

Two rows are *near* when every coordinate is within ``k`` ULPs (L-infinity in ULPs),
counted on the grid the values live on (:func:`~blackholes.io.dtypes.grid_of`: the
storage dtype, or BF16 when every value of an F32 matrix is a bf16 value). A *cluster*
is a connected component of "near"; an exact hole (bit identity, from
:func:`~blackholes.analysis.exact.find_groups`) is a cluster at ``k = 0``. The *halo*
of a hole is the non-hole rows of its cluster.

>>> x = np.float32([[1, 2], [1, 2], [1, 2.0000002], [5, 6], [7, 8]])
>>> r = near_clusters(x, "F32", 2)
>>> [(c.rows, c.singletons, c.diameter_ulps) for c in r.clusters]
[([0, 1, 2], [2], 1)]
>>> r.halo(0)
[2]

Exact, without looking at all pairs. Every row gets an integer key per coordinate
(adjacent values differ by 1, so ``|key_a - key_b|`` is their ULP distance), and rows are
split into *cells*, coordinate by coordinate, such that **every near pair of non-NaN rows
shares at least one final cell**. Each cut keeps that true:

* **Jumps (free).** A cell is cut wherever its sorted keys in the coordinate jump by more
  than ``k``: the keys of a near pair are at most ``k`` apart, so every step between them
  is too, and both land in the same piece. No row is copied; on sparse grids (f32) or for
  a large ``k`` (signs alone separate) this does most of the work.
* **Shifted grids.** With ``W = k + 1``, a cell is also cut by two grids of buckets ``2W``
  keys wide, the second shifted by ``W``: bucket ``floor(key / 2W)`` and bucket
  ``floor((key + W) / 2W)``. Together the two grids' boundaries are every multiple of
  ``W``, each grid owning alternate ones. Two keys at most ``k < W`` apart have at most one
  multiple of ``W`` between them, so one of the two grids puts them in the same bucket.
  Each row goes into one child per grid, so this pays only where buckets are narrow next
  to the data's spread (a sample decides per coordinate). A child holding its whole
  parent replaces it (it holds every pair).
* One-row pieces hold no pair and are dropped; cells holding exactly the same rows are
  kept once. By induction every near pair shares a final cell.
* **Small cells** (at most ``LEAF_ROWS`` rows) have all their pairs checked.
* **Cells that stay large** get fresh coordinates (a sample of the cell ranks them), up to
  ``MAX_DEPTH`` rounds; cells no coordinate shrinks are settled whole: if their bounding
  box is within ``k`` in every coordinate every pair is near (a clique, joined as a star);
  otherwise all their pairs are checked, skipping pairs already in one component (which
  cannot change the components). Only these cells cost quadratic time, in their own size:
  they are the clouds of near-identical rows themselves.
* **Checking** a pair first compares the keys held in memory for the ``PROBES`` first
  split coordinates (a near pair is near there too, so this only drops far pairs), then
  every coordinate of the two rows. Only a pair within ``k`` everywhere, neither row
  holding a NaN, becomes an edge: nothing beyond ``k`` is ever joined directly.

Cost: a sample of rows and one slice of ``PROBES`` adjacent columns of every row choose
and hold the first split keys; afterwards only candidate rows are read (about a third of
a second for the 151,936 x 2,560 stand-in of ``benchmarks/bench_near.py``, k = 8).
Memory: ``PROBES`` int32 keys per row, plus bounded blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import (
    STORAGE_DTYPES,
    ULP_NAN,
    check_float_dtype,
    grid_of,
    is_nan_key,
    key_bits,
    key_distance,
    to_float64,
)

from blackholes.analysis.near_search import (
    BLOCK_VALUES, Clock, PairFinder, Rows, UnionFind, representatives,
)

MAX_K = 1 << 16  # larger "nearness" is meaningless: a bf16 grid has 65,536 values in all
EXACT_L2_ROWS = 2048  # distinct vectors in a cluster up to which max_l2 is taken over all pairs
# ---------------------------------------------------------------------------- results


@dataclass
class Member:
    """One distinct vector of a cluster: an exact hole (several rows) or a singleton row,
    and its distance to the cluster's reference vector."""

    row: int  # the vector's first row
    hole: int | None  # index into the exact groups when the vector is a hole
    size: int  # rows holding this vector (1 for a singleton)
    ulps: int  # L-infinity distance to the reference, in ULPs (ULP_NAN: a NaN coordinate)
    l2: float  # Euclidean distance to the reference, in value units
    differing: int  # coordinates whose bits differ from the reference

    def to_json(self) -> dict:
        out = {"row": self.row, "size": self.size, "ulps": _json_ulps(self.ulps),
               "l2": _json_float(self.l2), "differing": self.differing}
        if self.hole is not None:
            out["hole_id"] = self.hole + 1
        return out


@dataclass
class Cluster:
    """A connected component of "within k ULPs in every coordinate" (two rows or more)."""

    id: int  # 1 = the cluster with the most rows
    rows: list[int]  # every row, sorted
    holes: list[int]  # indices into the exact groups (0 = the largest group)
    singletons: list[int]  # rows in no exact hole, sorted
    reference: int  # first row of the largest hole (or, with no hole, the smallest row)
    diameter_ulps: int  # max over pairs of the L-infinity ULP distance
    max_l2: float  # max over pairs of the L2 distance (an upper bound when max_l2_exact is False)
    max_l2_exact: bool
    members: list[Member]  # the reference first, then by ULPs from it

    @property
    def size(self) -> int:
        return len(self.rows)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "size": self.size,
            "hole_ids": [h + 1 for h in self.holes],
            "singletons": self.singletons,
            "reference_row": self.reference,
            "diameter_ulps": self.diameter_ulps,
            "max_l2": _json_float(self.max_l2),
            "max_l2_method": "all pairs" if self.max_l2_exact else
                             "upper bound: min(2 x max distance to the reference, bounding-box diagonal)",
            "members": [m.to_json() for m in self.members],
        }


@dataclass
class NearResult:
    """What :func:`near_clusters` found: every cluster of two rows or more, largest first."""

    k: int
    grid: str  # the dtype whose ULPs are counted
    dtype: str  # the storage dtype
    shape: tuple[int, int]
    clusters: list[Cluster]
    n_holes: int
    hole_cluster: list[int] = field(repr=False, default_factory=list)  # hole index -> index into clusters
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def grid_note(self) -> str:
        if self.grid == self.dtype:
            return f"ULPs counted on the {self.grid} grid (the storage dtype)"
        return f"ULPs counted on the {self.grid} grid: every {self.dtype} value is a {self.grid} value"

    def cluster_of(self, hole: int) -> Cluster:
        """The cluster holding exact hole ``hole`` (index into the groups)."""
        if not 0 <= hole < self.n_holes:
            raise BlackholesError(f"there is no hole {hole}; holes are numbered 0..{self.n_holes - 1}")
        return self.clusters[self.hole_cluster[hole]]

    def halo(self, hole: int) -> list[int]:
        """The halo of a hole: the rows of its cluster that are in no exact hole."""
        return self.cluster_of(hole).singletons

    def to_json(self) -> dict:
        return {
            "k": self.k,
            "grid": self.grid,
            "grid_note": self.grid_note,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "n_clusters": len(self.clusters),
            "near_rows": sum(len(c.singletons) for c in self.clusters),
            "clusters_without_holes": sum(1 for c in self.clusters if not c.holes),
            "numbering": "clusters and holes are numbered from 1; hole ids are the scan's group ids",
            "clusters": [c.to_json() for c in self.clusters],
            "stats": self.stats,
            "seconds": self.seconds,
        }


@dataclass
class Anatomy:
    """How the exact holes' vectors differ, bit by bit (see :func:`anatomy`)."""

    grid: str
    rows: list[int]  # first row of each hole, in the groups' order
    coordinates: list[int]  # coordinates in which the hole vectors do not all agree
    spread_ulps: list[int]  # per such coordinate: max - min over the holes, in ULPs
    offsets: np.ndarray = field(repr=False)  # [holes, coordinates] ULPs from hole 0's value (ULP_NAN: NaN)
    ulps: np.ndarray = field(repr=False)  # [holes, holes] L-infinity distance in ULPs
    differing: np.ndarray = field(repr=False)  # [holes, holes] number of differing coordinates
    one_ulp_components: list[list[int]] = field(default_factory=list)  # hole indices

    def to_json(self) -> dict:
        return {
            "grid": self.grid,
            "holes": len(self.rows),
            "hole_rows": self.rows,
            "coordinates": self.coordinates,
            "spread_ulps": [_json_ulps(u) for u in self.spread_ulps],
            "offsets_from_hole_1": [[_json_ulps(u) for u in row] for row in self.offsets.tolist()],
            "ulps": [[_json_ulps(u) for u in row] for row in self.ulps.tolist()],
            "differing": self.differing.tolist(),
            "one_ulp_graph": "holes joined when they differ by exactly 1 ULP in exactly one coordinate",
            "one_ulp_components": [[h + 1 for h in c] for c in self.one_ulp_components],
            "numbering": "holes are numbered from 1, as the scan's group ids",
        }


def _json_ulps(u) -> int | None:
    return None if int(u) >= ULP_NAN else int(u)


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------------- checks


def _check_matrix(array, dtype: str) -> np.ndarray:
    """The matrix as a 2-D numpy array of a float dtype with a ULP grid, or a one-line error."""
    if not isinstance(dtype, str):
        raise BlackholesError(f"dtype must be a dtype name such as 'BF16', got {dtype!r}")
    check_float_dtype(dtype)
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.ndim != 2:
        raise BlackholesError(f"expected a 2-D [rows, dim] matrix, got shape {list(array.shape)}")
    if array.dtype.itemsize != STORAGE_DTYPES[dtype].itemsize:
        raise BlackholesError(f"a {array.dtype} array cannot hold {dtype} values")
    return array


def check_k(k) -> int:
    """``k`` as an int in 0..2**16, or a one-line error.

    >>> check_k(8)
    8
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise BlackholesError(f"--near takes a whole number of ULPs (0 to {MAX_K:,}), got {k!r}")
    if not 0 <= int(k) <= MAX_K:
        raise BlackholesError(f"--near must be between 0 and {MAX_K:,} ULPs (2**16), got {int(k):,}")
    return int(k)


def _check_groups(groups, array: np.ndarray) -> list[np.ndarray]:
    """The exact groups as sorted int64 arrays, checked: two or more rows each, no row twice,
    and every row bit-identical to its group's first (only the groups' rows are read)."""
    n = array.shape[0]
    out = [np.sort(np.asarray(g, dtype=np.int64).ravel()) for g in groups]
    every = np.concatenate(out) if out else np.zeros(0, np.int64)
    if any(len(g) < 2 for g in out) or (len(every) and (every.min() < 0 or every.max() >= n)) \
            or len(np.unique(every)) != len(every):
        raise BlackholesError("groups must be disjoint lists of two or more row ids of this matrix")
    first = np.concatenate([np.full(len(g), g[0]) for g in out]) if out else every
    step = max(1, BLOCK_VALUES // max(1, array.shape[1]))
    for a in range(0, len(every), step):
        rows, firsts = np.asarray(array[every[a : a + step]]), np.asarray(array[first[a : a + step]])
        unsigned = np.dtype(f"u{array.dtype.itemsize}")
        if not np.array_equal(rows.view(unsigned), firsts.view(unsigned)):
            raise BlackholesError("groups must hold bit-identical rows (as find_groups gives them)")
    return out


# ---------------------------------------------------------------------------- API


def near_clusters(array, dtype: str, k: int, *, groups=None, grid: str | None = None) -> NearResult:
    """Every cluster of rows within ``k`` ULPs of each other in every coordinate, exactly.

    ``array``: 2-D storage-dtype array (BF16 as uint16 bits; a memmap is read in blocks).
    ``groups``: the exact groups of ``find_groups(array)`` (computed when omitted).
    ``grid``: the ULP grid, when already known (default :func:`grid_of`).

    >>> x = np.float32([[0.0, 1], [-0.0, 1], [3, 4]])
    >>> [c.rows for c in near_clusters(x, "F32", 1).clusters]     # signed zeros: 1 ULP apart
    [[0, 1]]
    >>> near_clusters(x, "F32", 0).clusters                        # k = 0: the exact holes only
    []
    """
    array = _check_matrix(array, dtype)
    k = check_k(k)
    t0 = time.perf_counter()
    grid = check_float_dtype(grid) if grid is not None else grid_of(array, dtype)
    if groups is None:
        from blackholes.analysis.exact import find_groups

        groups = find_groups(array)
    groups = _check_groups(groups, array)
    reps, hole_of_rep = representatives(array.shape[0], groups)
    rows = Rows(array, dtype, grid)
    finder = PairFinder(rows, reps, k)
    finder.stats["seconds"]["grid"] = round(time.perf_counter() - t0, 4)
    finder.run()
    clock = Clock(finder.stats["seconds"])
    clusters, hole_cluster = _build_clusters(rows, reps, hole_of_rep, groups, finder.uf.labels())
    clock("clusters")
    return NearResult(k=k, grid=grid, dtype=dtype, shape=(int(array.shape[0]), int(array.shape[1])),
                      clusters=clusters, n_holes=len(groups), hole_cluster=hole_cluster,
                      stats=finder.stats, seconds=time.perf_counter() - t0)


def anatomy(array, dtype: str, groups, *, grid: str | None = None) -> Anatomy:
    """How the exact holes' vectors differ: where, by how many ULPs, and which are 1 ULP apart.

    ``groups``: the exact groups (largest first, as :func:`~blackholes.analysis.exact.find_groups` gives them).

    >>> x = np.float32([[1, 2, 3], [1, 2, 3], [1, 2.0000002, 3], [1, 2.0000002, 3]])
    >>> a = anatomy(x, "F32", [[0, 1], [2, 3]])
    >>> a.coordinates, a.ulps.tolist(), a.one_ulp_components
    ([1], [[0, 1], [1, 0]], [[0, 1]])
    """
    array = _check_matrix(array, dtype)
    groups = _check_groups(groups, array)
    grid = check_float_dtype(grid) if grid is not None else grid_of(array, dtype)
    first = np.array([int(g[0]) for g in groups], dtype=np.int64)
    keys = Rows(array, dtype, grid).keys(first).astype(np.int64)
    nan = is_nan_key(keys, grid)
    differ = np.flatnonzero((keys != keys[:1]).any(axis=0)) if len(first) else np.zeros(0, np.int64)
    sub, sub_nan = keys[:, differ], nan[:, differ]
    offsets = np.where(sub_nan | sub_nan[:1], ULP_NAN, sub - sub[:1]) if len(first) else sub
    spread = [ULP_NAN if sub_nan[:, c].any() else int(sub[:, c].max() - sub[:, c].min())
              for c in range(sub.shape[1])]
    ulps, counts = _hole_distances(sub, nan.any(axis=1))
    edges = np.argwhere((counts == 1) & (ulps == 1))
    uf = UnionFind(len(first))
    uf.union(edges[:, 0], edges[:, 1])
    labels = uf.labels()
    comps = [np.flatnonzero(labels == r).tolist() for r in np.unique(labels)]
    comps.sort(key=lambda c: (-len(c), c[0]))
    return Anatomy(grid=grid, rows=first.tolist(), coordinates=differ.tolist(), spread_ulps=spread,
                   offsets=offsets, ulps=ulps, differing=counts, one_ulp_components=comps)


def _hole_distances(sub: np.ndarray, nan_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[H, H] L-infinity ULPs and differing-coordinate counts, from the holes' differing columns.

    A hole holding a NaN is near nothing: ULP_NAN to every other hole (0 to itself).
    """
    h = len(sub)
    ulps = np.zeros((h, h), np.int64)
    counts = np.zeros((h, h), np.int64)
    for i in range(h):
        d = key_distance(sub[i], sub)
        counts[i] = (d != 0).sum(axis=1)  # keys are a bijection: distinct keys = distinct bits
        ulps[i] = d.max(axis=1, initial=0)
        ulps[i][nan_row[i] | nan_row] = ULP_NAN
        ulps[i, i] = 0
    return ulps, counts


# ---------------------------------------------------------------------------- clusters


def _build_clusters(rows: Rows, reps: np.ndarray, hole_of_rep: np.ndarray, groups: list[np.ndarray],
                    labels: np.ndarray) -> tuple[list[Cluster], list[int]]:
    """Components of two rows or more (holes count their rows), with their statistics."""
    size = np.bincount(labels, minlength=len(labels))
    wanted = size >= 2
    wanted[labels[hole_of_rep >= 0]] = True  # a hole is a cluster even when nothing is near it
    picked = np.flatnonzero(wanted[labels])
    order = picked[np.argsort(labels[picked], kind="stable")]
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]]) if len(order) else []
    found = []
    for comp in (np.split(order, starts[1:]) if len(order) else []):
        holes = sorted(int(h) for h in hole_of_rep[comp] if h >= 0)
        found.append(_cluster(rows, reps[comp], hole_of_rep[comp], holes, groups))
    found.sort(key=lambda c: (-c.size, c.rows[0]))
    hole_cluster = [0] * len(groups)
    for n, c in enumerate(found):
        c.id = n + 1
        for h in c.holes:
            hole_cluster[h] = n
    return found, hole_cluster


def _cluster(rows: Rows, members: np.ndarray, hole_of: np.ndarray, holes: list[int],
             groups: list[np.ndarray]) -> Cluster:
    """One cluster's members, diameter and distances to its reference vector."""
    ref = int(groups[holes[0]][0]) if holes else int(members.min())
    ref_keys = rows.keys(np.array([ref])).astype(np.int64)[0]
    ref_vals = rows.values(np.array([ref]))[0]
    ulps, l2, differing = [], [], []
    lo = hi = None
    step = rows.block_rows()
    for a in range(0, len(members), step):
        part = members[a : a + step]
        keys = rows.keys(part).astype(np.int64)
        d = key_distance(keys, ref_keys)
        nan = rows.nan_rows(keys) | rows.nan_rows(ref_keys[None])[0]
        ulps.append(np.where(nan, ULP_NAN, d.max(axis=1)))
        differing.append((d != 0).sum(axis=1))
        with np.errstate(invalid="ignore", over="ignore"):
            l2.append(np.sqrt(((rows.values(part) - ref_vals) ** 2).sum(axis=1)))
        lo = keys.min(axis=0) if lo is None else np.minimum(lo, keys.min(axis=0))
        hi = keys.max(axis=0) if hi is None else np.maximum(hi, keys.max(axis=0))
    ulps, l2, differing = np.concatenate(ulps), np.concatenate(l2), np.concatenate(differing)
    diameter = int(key_distance(hi, lo).max()) if len(members) > 1 else 0  # max over pairs = widest box side
    max_l2, exact = _max_l2(rows, members, ref_vals, l2, lo, hi)
    all_rows = np.sort(np.concatenate([groups[h] if h >= 0 else np.array([r]) for r, h in zip(members, hole_of)]))
    table = [Member(row=int(r), hole=int(h) if h >= 0 else None, size=len(groups[h]) if h >= 0 else 1,
                    ulps=int(u), l2=float(e), differing=int(c))
             for r, h, u, e, c in zip(members, hole_of, ulps, l2, differing)]
    table.sort(key=lambda m: (m.row != ref, m.ulps, m.differing, m.row))
    return Cluster(id=0, rows=all_rows.tolist(), holes=holes,
                   singletons=sorted(int(r) for r, h in zip(members, hole_of) if h < 0),
                   reference=ref, diameter_ulps=diameter, max_l2=max_l2, max_l2_exact=exact, members=table)


def _max_l2(rows: Rows, members: np.ndarray, ref_vals: np.ndarray, l2: np.ndarray,
            lo: np.ndarray, hi: np.ndarray) -> tuple[float, bool]:
    """Max pairwise L2 distance: over all pairs up to EXACT_L2_ROWS vectors, else an upper bound."""
    if len(members) < 2:
        return 0.0, True
    if len(members) <= EXACT_L2_ROWS:
        with np.errstate(invalid="ignore", over="ignore"):  # inf values: inf / NaN distances, no warning
            dev = rows.values(members) - ref_vals  # small offsets: the Gram identity loses little here
            sq = (dev * dev).sum(axis=1)
            d2 = sq[:, None] + sq[None, :] - 2.0 * (dev @ dev.T)
            top = float(np.max(d2))  # NaN when an infinity is involved (reported as null)
        return (top if np.isnan(top) else float(np.sqrt(max(top, 0.0)))), True
    with np.errstate(invalid="ignore", over="ignore"):
        span = to_float64(key_bits(hi, rows.grid), rows.grid) - to_float64(key_bits(lo, rows.grid), rows.grid)
        return float(min(2 * np.max(l2), np.sqrt((span * span).sum()))), False
