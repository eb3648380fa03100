"""The coarsening sweep: does rounding alone, with no training, make black holes?

``N`` rows start around one centre ``c`` and are rounded once to a storage dtype::

    row_i = round_dtype(c + float32(sigma) * eps_i)        eps_i ~ N(0, 1), float32

(``sigma = 0``: every row is ``round_dtype(c)``). The noise is drawn exactly as ``blackholes
train`` draws its initialisation (a torch generator seeded with the seed: first a ``[D]``
draw, then the ``[N, D]`` noise), so with ``centre="random"`` — ``c = 0.02 * draw``, the
``--init centre`` point — the rows are bit for bit the embedding a training run with that
σ and seed starts from. With a mask file (``blackholes scan --mask``) the centre is the
largest hole's stored vector (``vectors`` row 0; ``vectors_output``, else ``vectors_input``,
for a ``--matrix both`` mask), widened exactly to float32.

For every σ and seed the sweep counts the holes (groups of bit-identical rows), the tokens
in them, the largest, all sizes, and the widest any row lies from the rounded centre (L∞,
in ULPs on the dtype's grid). With a target (a real model's scan JSON) it also measures how
far each simulated size distribution is from the real one (:func:`size_distance`) and picks
the σ that comes closest.

How 1,000 σ × 2,200 rows × 2,560 dims stays fast, and exact. For a fixed σ ≥ 0 every step
of ``round(c + σ ε)`` is monotone in ε, so in each dimension the rows sorted by ε (once per
seed) have non-decreasing rounded values, for every σ. Hence:

* the rows that round to the centre's own value in dimension d are one contiguous run of
  that order, found by bisection (≈ 2 log2 N evaluations of the formula, not N);
* the widest distance from the centre is reached by the smallest or the largest ε;
* a row that stays on the centre value in every dimension *is* the rounded centre. The
  other rows are told apart by their *excursions* (dimension, value) — few when σ is
  small: grouped by a hash of the excursion list, every match then verified exactly. When
  excursions are many (large σ) the rows are instead refined block by block of the
  busiest dimensions with :func:`~blackholes.analysis.exact.find_groups`, keeping only
  rows that are still tied, which stops after a block or two.

Identity is always bit identity of the rounded values (the formula itself is evaluated,
never a float distance); the tests compare every count with a brute-force reference.

>>> r = coarsening_sweep([0.0, 3e-6, 1e-3], seeds=[0], tokens=64, dim=16)
>>> [(p.sigma, p.holes, p.tokens_in_holes) for p in r.points]
[(0.0, 1, 64), (3e-06, 2, 62), (0.001, 0, 0)]
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blackholes.analysis.exact import find_groups
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import bf16_from_float32, ulp_key
from blackholes.pipelines.coarsening_inputs import (  # CENTRE_SCALE: the cloud of the tests and benchmarks
    CENTRE_SCALE, Centre, Target, load_centre, load_target, parse_grid, parse_seeds,
)

DTYPES = {"bf16": "BF16", "f16": "F16", "fp16": "F16", "f32": "F32", "fp32": "F32"}  # --dtype names
DEFAULT_TOKENS, DEFAULT_DIM = 128, 64  # the tiny GPT's vocabulary and width (blackholes train)
DEFAULT_SIGMAS = "0,1e-7:1e-1:61:log"  # σ = 0, then 10 per decade from 1e-7 to 1e-1
DEFAULT_SEEDS = "0,1,2"
SPARSE_PER_ROW = 24  # excursions per row below which the sparse grouping is cheaper than the dense one
DENSE_BLOCK = 48  # dimensions per refinement block of the dense grouping
SIGMA_CHUNK = 64  # σ values bisected together
MAX_ELEMENTS = 100_000_000  # N × D at most: 16 bytes each are held per seed (noise, order, sorted, draw)
SORT_CHUNK = 256  # dimensions sorted at a time
DISTANCE = "L1 between the hole sizes, largest first, the shorter list padded with zeros (in tokens)"


# ---------------------------------------------------------------------------- the rows


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``values`` rounded to ``dtype`` (nearest-even), as that format's raw bits.

    >>> round_to(np.float32([1.0, 1.00390625, 1.01171875]), "BF16")   # ties go to the even neighbour
    array([16256, 16256, 16258], dtype=uint16)
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        return bf16_from_float32(values)
    if dtype == "F16":
        with np.errstate(over="ignore"):  # beyond 65504 rounds to inf, as a cast must
            return values.astype(np.float16).view(np.uint16)
    if dtype == "F32":
        return values.view(np.uint32)
    raise BlackholesError(f"the coarsening sweep rounds to BF16, F16 or F32, not {dtype}")


def perturbed(centre: np.ndarray, eps: np.ndarray, sigma: float, dtype: str) -> np.ndarray:
    """The rows ``round(c + float32(sigma) * eps)`` as raw bits ``[N, D]`` — the definition.

    ``sigma = 0`` gives ``round(c)`` in every row (no addition: ``c = -0.0`` stays ``-0.0``).

    >>> perturbed(np.float32([1.0]), np.float32([[0.0], [1.0]]), 0.5, "BF16")
    array([[16256],
           [16320]], dtype=uint16)
    """
    centre = np.asarray(centre, np.float32)
    if sigma == 0:
        return np.repeat(round_to(centre, dtype)[None, :], len(eps), axis=0)
    with np.errstate(over="ignore"):
        return round_to(centre + np.float32(sigma) * np.asarray(eps, np.float32), dtype)


def draw_noise(seed: int, tokens: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(draw [D], eps [N, D])`` float32, in the order ``GPT.init_weights`` draws them.

    >>> draw, eps = draw_noise(0, 4, 3)
    >>> draw.shape, eps.shape, eps.dtype
    ((3,), (4, 3), dtype('float32'))
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    draw = torch.randn(dim, generator=generator, dtype=torch.float32)
    eps = torch.randn(tokens, dim, generator=generator, dtype=torch.float32)
    return draw.numpy(), eps.numpy()


@dataclass
class Cloud:
    """One seed's rows, ready for every σ: the noise by dimension, and sorted by it.

    ``columns[d]`` is ε of every row in dimension d; ``order[d]`` the row ids sorted by it
    (ascending, stable); ``sorted[d]`` = ``columns[d][order[d]]``; ``centre_key`` the ULP key
    of ``round(c)``.
    """

    centre: np.ndarray  # float32 [D]
    columns: np.ndarray  # float32 [D, N]
    order: np.ndarray  # int32 [D, N]
    sorted: np.ndarray  # float32 [D, N]
    dtype: str
    centre_key: np.ndarray  # int64 [D]

    @property
    def tokens(self) -> int:
        return self.columns.shape[1]

    @property
    def dim(self) -> int:
        return self.columns.shape[0]

    def keys(self, sigma: np.ndarray, eps: np.ndarray, dims: np.ndarray) -> np.ndarray:
        """ULP keys of ``round(c[dims] + sigma * eps)`` (broadcasting; ``sigma`` float32 > 0)."""
        return ulp_key(self.bits(sigma, eps, dims), self.dtype)

    def bits(self, sigma, eps: np.ndarray, dims: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return round_to(self.centre[dims] + np.float32(sigma) * eps, self.dtype)


def make_cloud(centre: np.ndarray, eps: np.ndarray, dtype: str) -> Cloud:
    """Sort one seed's noise ``eps [N, D]`` by dimension, for :func:`coarsen`.

    >>> make_cloud(np.float32([0.5, 0.25]), np.float32([[1, -1], [0, 2], [-1, 0]]), "BF16").order
    array([[2, 1, 0],
           [0, 2, 1]], dtype=int32)
    """
    centre = np.ascontiguousarray(centre, np.float32)
    columns = np.ascontiguousarray(np.asarray(eps, np.float32).T)
    if not np.isfinite(columns).all():
        raise BlackholesError("the noise must be finite")
    order = np.empty(columns.shape, np.int32)
    for lo in range(0, len(columns), SORT_CHUNK):  # in blocks of dimensions: the int64 keys stay small
        # by ULP key, not value: -0.0 sorts before +0.0, as their sums with a centre of -0.0 do
        keys = ulp_key(columns[lo : lo + SORT_CHUNK], "F32")
        order[lo : lo + SORT_CHUNK] = np.argsort(keys, axis=1, kind="stable")
    return Cloud(centre, columns, order, np.take_along_axis(columns, order, axis=1), dtype,
                 ulp_key(round_to(centre, dtype), dtype))


# ---------------------------------------------------------------------------- per σ: the centre's run, the spread


def centre_runs(cloud: Cloud, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` int64 ``[S, D]``: in dimension d, sorted ranks ``lo..hi-1`` round to the centre.

    Ranks below ``lo`` round below it, ranks from ``hi`` on above it (the rounded values are
    monotone in ε). Found by bisection: ``2 ceil(log2(N + 1))`` evaluations per (σ, d).
    """
    sig = np.asarray(sigmas, np.float64).astype(np.float32)[:, None]
    n, dims = cloud.tokens, np.arange(cloud.dim)
    below = _first_rank(cloud, sig, dims, lambda k: k >= cloud.centre_key)  # first rank not below
    above = _first_rank(cloud, sig, dims, lambda k: k > cloud.centre_key)  # first rank above
    zero = np.asarray(sigmas, np.float64) == 0  # σ = 0: every row is the centre
    below[zero], above[zero] = 0, n
    return below, above


def _first_rank(cloud: Cloud, sig: np.ndarray, dims: np.ndarray, reached) -> np.ndarray:
    """Per (σ, d), the first sorted rank whose rounded key satisfies the monotone ``reached``."""
    n = cloud.tokens
    lo = np.zeros((len(sig), len(dims)), np.int64)
    hi = np.full_like(lo, n)
    for _ in range(max(1, int(n).bit_length())):
        mid = np.minimum((lo + hi) // 2, n - 1)
        keys = cloud.keys(sig, cloud.sorted[dims, mid], dims)
        yes = reached(keys)
        open_ = lo < hi
        hi = np.where(open_ & yes, mid, hi)
        lo = np.where(open_ & ~yes, mid + 1, lo)
    return lo


def max_ulps(cloud: Cloud, sigmas: np.ndarray) -> np.ndarray:
    """The widest L∞ distance of any row from the rounded centre, in ULPs, per σ (int64 ``[S]``).

    Monotonicity again: in each dimension the extremes are the rows of smallest and largest ε.
    """
    sig = np.asarray(sigmas, np.float64).astype(np.float32)[:, None]
    dims = np.arange(cloud.dim)
    low = cloud.keys(sig, cloud.sorted[:, 0], dims)
    high = cloud.keys(sig, cloud.sorted[:, -1], dims)
    spread = np.maximum(cloud.centre_key - low, high - cloud.centre_key).max(axis=1)
    return np.where(np.asarray(sigmas, np.float64) == 0, 0, spread)


# ---------------------------------------------------------------------------- per σ: the holes


def holes_at(cloud: Cloud, sigma: float, lo: np.ndarray, hi: np.ndarray, *, mode: str = "auto") -> list[np.ndarray]:
    """Every hole of the rows at ``sigma``: sorted row ids, largest first (as ``find_groups``).

    ``lo``, ``hi``: this σ's row of :func:`centre_runs`. ``mode``: ``"sparse"``, ``"dense"``
    or ``"auto"`` (sparse when there are few excursions from the centre).
    """
    excursions = lo + (cloud.tokens - hi)
    if mode == "auto":
        mode = "sparse" if excursions.sum() <= SPARSE_PER_ROW * cloud.tokens else "dense"
    if mode == "sparse":
        groups = _sparse_holes(cloud, sigma, lo, hi)
    else:
        groups = _dense_holes(cloud, sigma, excursions)
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def _local_index(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., len-1 for each segment of ``lengths``, concatenated."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _sparse_holes(cloud: Cloud, sigma: float, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """Holes from the excursions: rows with none are the centre; the rest grouped by their list."""
    n = cloud.tokens
    dims = np.arange(cloud.dim)
    d = np.concatenate([np.repeat(dims, lo), np.repeat(dims, n - hi)])
    rank = np.concatenate([_local_index(lo), np.repeat(hi, n - hi) + _local_index(n - hi)])
    rows = cloud.order[d, rank].astype(np.int64)
    values = cloud.bits(sigma, cloud.sorted[d, rank], d).astype(np.int64)
    at_centre = np.ones(n, bool)
    at_centre[rows] = False
    groups = [np.flatnonzero(at_centre)] if at_centre.sum() >= 2 else []
    return groups + _group_excursions(rows, d, values, cloud.dim)


def _group_excursions(rows: np.ndarray, d: np.ndarray, values: np.ndarray, dim: int) -> list[np.ndarray]:
    """Rows with identical (dimension, value) lists: hashed, then every match compared exactly."""
    if len(rows) == 0:
        return []
    order = np.argsort(rows * dim + d, kind="stable")  # each row's excursions, by dimension
    rows, d, values = rows[order], d[order], values[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    lengths = np.diff(np.r_[starts, len(rows)])
    digest = np.add.reduceat(_mix(d, values), starts)  # uint64, wraps mod 2**64
    by_key = np.lexsort((digest, lengths))
    same = (lengths[by_key][1:] == lengths[by_key][:-1]) & (digest[by_key][1:] == digest[by_key][:-1])
    run_start = np.flatnonzero(np.r_[True, ~same])
    run_len = np.diff(np.r_[run_start, len(by_key)])
    groups = []
    for s, k in zip(run_start[run_len >= 2], run_len[run_len >= 2]):
        members = by_key[s : s + k]  # segment ids sharing a length and a digest
        groups.extend(_verified(members, starts, lengths, rows, d, values))
    return groups


def _mix(d: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit word per (dimension, value) (splitmix64's finaliser)."""
    with np.errstate(over="ignore"):
        z = (d.astype(np.uint64) << np.uint64(32)) ^ (values.astype(np.uint64) & np.uint64(0xFFFFFFFF))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _verified(members, starts, lengths, rows, d, values) -> list[np.ndarray]:
    """Split segments that share a digest into groups of truly identical excursion lists."""
    first, length = members[0], int(lengths[members[0]])
    pos = starts[members][:, None] + np.arange(length)
    ref = starts[first] + np.arange(length)
    equal = ((d[pos] == d[ref]) & (values[pos] == values[ref])).all(axis=1)
    if equal.all():
        return [np.sort(rows[starts[members]])]
    exact: dict[bytes, list[int]] = {}  # a real hash collision: group by the lists themselves
    for m in members:
        span = slice(starts[m], starts[m] + lengths[m])
        exact.setdefault(d[span].tobytes() + values[span].tobytes(), []).append(int(rows[starts[m]]))
    return [np.sort(np.array(ids, np.int64)) for ids in exact.values() if len(ids) >= 2]


def _dense_holes(cloud: Cloud, sigma: float, excursions: np.ndarray) -> list[np.ndarray]:
    """Holes by refinement: rows tied on the busiest dimensions so far, block by block.

    A dimension without excursions holds the centre's value in every row: it tells no rows
    apart and is skipped. Rows that are unique on some block are unique, and are dropped.
    """
    busy = np.argsort(-excursions, kind="stable")
    busy = busy[excursions[busy] > 0]
    tied = np.arange(cloud.tokens)
    label = np.zeros(cloud.tokens, np.uint32)
    for lo in range(0, len(busy), DENSE_BLOCK):
        block = busy[lo : lo + DENSE_BLOCK]
        bits = cloud.bits(sigma, cloud.columns[block][:, tied], block[:, None])  # [B, tied]
        keyed = np.empty((len(tied), 1 + len(block)), np.uint32)
        keyed[:, 0], keyed[:, 1:] = label, bits.T
        found = find_groups(keyed)
        if not found:
            return []
        tied = tied[np.concatenate(found)]
        label = np.repeat(np.arange(len(found), dtype=np.uint32), [len(g) for g in found])
    return [np.sort(g) for g in np.split(tied, np.cumsum(np.bincount(label))[:-1])]


def coarsen(cloud: Cloud, sigmas, *, mode: str = "auto"):
    """Yield ``(sigma, holes, max_ulps)`` for every σ (holes as :func:`holes_at`), in order.

    >>> cloud = make_cloud(np.float32([0.5, 0.25]), np.float32([[1, -1], [0, 2], [1, -1]]), "BF16")
    >>> [(s, [g.tolist() for g in holes], ulps) for s, holes, ulps in coarsen(cloud, [0.0, 1e-6, 0.1])]
    [(0.0, [[0, 1, 2]], 0), (1e-06, [[0, 1, 2]], 0), (0.1, [[0, 2]], 102)]
    """
    sigmas = np.asarray(sigmas, np.float64)
    for start in range(0, len(sigmas), SIGMA_CHUNK):
        chunk = sigmas[start : start + SIGMA_CHUNK]
        lo, hi = centre_runs(cloud, chunk)
        spread = max_ulps(cloud, chunk)
        for i, sigma in enumerate(chunk):
            yield float(sigma), holes_at(cloud, float(np.float32(sigma)), lo[i], hi[i], mode=mode), int(spread[i])


# ---------------------------------------------------------------------------- comparing with a real model


def size_distance(a, b) -> int:
    """How far apart two hole-size distributions are, in tokens.

    Both lists sorted largest first, the shorter padded with zeros (empty holes), then
    ``sum |a_i - b_i|``. Why this one: pairing sorted values is the optimal matching on a
    line, so this is the earth mover's (Wasserstein-1) distance between the two lists of
    holes — the least total change of hole sizes that turns one into the other, a missing
    hole costing its whole size. It is 0 only for identical size multisets, it is counted
    in tokens (readable), and it weighs the big holes, where the tokens are, most. A
    chi-square on size histograms would need many holes per bin; a real model has ~10.

    >>> size_distance([814, 704, 306], [700, 800])
    324
    """
    a = np.sort(np.asarray(a, np.int64))[::-1]
    b = np.sort(np.asarray(b, np.int64))[::-1]
    n = max(len(a), len(b))
    return int(np.abs(np.pad(a, (0, n - len(a))) - np.pad(b, (0, n - len(b)))).sum())


# ---------------------------------------------------------------------------- the sweep


@dataclass
class CoarseningPoint:
    """One (σ, seed): the holes the rounded rows form."""

    sigma: float
    seed: int
    holes: int
    tokens_in_holes: int
    largest: int
    sizes: list[int]  # largest first
    max_ulps: int  # the widest L∞ distance of a row from the rounded centre, in ULPs
    distance: int | None = None  # size_distance to the target, when there is one

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CoarseningResult:
    """Every (σ, seed) of a coarsening sweep, and how close each σ comes to the target.

    >>> r = coarsening_sweep([0, 1e-6, 1e-3], seeds=[0, 1], tokens=32, dim=8, target=[28, 3])
    >>> [row["holes"]["mean"] for row in r.by_sigma()]
    [1.0, 1.5, 0.0]
    >>> r.best()["sigma"], r.best()["sizes_by_seed"]          # seed 1 rounds into exactly [28, 3]
    (1e-06, [[32], [28, 3]])
    """

    centre: Centre
    dtype: str
    tokens: int
    dim: int
    sigmas: list[float]
    seeds: list[int]
    points: list[CoarseningPoint]
    target: Target | None = None
    seconds: float = 0.0

    def by_sigma(self) -> list[dict]:
        """Per σ: mean, min and max over the seeds of each count (and of the distance)."""
        out = []
        for sigma in self.sigmas:
            at = [p for p in self.points if p.sigma == sigma]
            row = {"sigma": sigma, "seeds": len(at)}
            for name in ("holes", "tokens_in_holes", "largest", "max_ulps", "distance"):
                values = [getattr(p, name) for p in at if getattr(p, name) is not None]
                if values:
                    row[name] = {"mean": float(np.mean(values)), "min": int(min(values)), "max": int(max(values))}
            out.append(row)
        return out

    def best(self) -> dict | None:
        """The σ whose mean distance to the target over the seeds is smallest (ties: the smallest σ)."""
        if self.target is None or not self.points:
            return None
        rows = self.by_sigma()
        best = min(rows, key=lambda r: (r["distance"]["mean"], r["sigma"]))
        sizes = [p.sizes for p in self.points if p.sigma == best["sigma"]]
        return {"sigma": best["sigma"], "distance": best["distance"], "sizes_by_seed": sizes,
                "relative": best["distance"]["mean"] / max(1, self.target.tokens)}

    def to_json(self) -> dict:
        return {
            "format": "blackholes.coarsening",
            "definition": "row_i = round_dtype(c + float32(sigma) * eps_i), eps_i ~ N(0, 1) drawn as `blackholes "
                          "train` draws its init; holes = groups of bit-identical rows",
            "centre": self.centre.to_json(), "dtype": self.dtype, "tokens": self.tokens, "dim": self.dim,
            "sigmas": self.sigmas, "seeds": self.seeds,
            "target": None if self.target is None else self.target.to_json(),
            "distance": DISTANCE if self.target is not None else None,
            "best": self.best(), "by_sigma": self.by_sigma(),
            "points": [p.to_json() for p in self.points], "seconds": round(self.seconds, 3),
        }


@dataclass
class CoarseningOptions:
    """A validated sweep: everything is checked here, before any work."""

    sigmas: list[float]
    seeds: list[int]
    centre: Centre
    tokens: int
    dim: int
    dtype: str
    target: Target | None = None


def coarsening_options(sigmas, seeds=(0,), *, centre="random", tokens=None, dim=None, dtype=None,
                       target=None) -> CoarseningOptions:
    """Read and check the sweep's inputs; defaults as the module says. One line on bad input.

    Tokens: the target's hole tokens plus its halo (``scan --near``), else the mask's
    black-hole tokens, else 128. Width: the centre's, else the target's, else 64. Dtype: the
    grid the centre lives on, else the target's, else BF16.

    >>> o = coarsening_options("0:1e-3:3", centre="random", target=[5, 3], dim=16)
    >>> o.sigmas, o.tokens, o.dim, o.dtype
    ([0.0, 0.0005, 0.001], 8, 16, 'BF16')
    """
    grid, seed_list = parse_grid(sigmas), parse_seeds(seeds)
    c = centre if isinstance(centre, Centre) else load_centre(centre)
    t = target if isinstance(target, Target) or target is None else load_target(target)
    width = _width(c, t, dim)
    if dtype is None:
        dtype = c.grid if c.grid in ("BF16", "F16", "F32") else (t.dtype if t and t.dtype in ("BF16", "F16", "F32")
                                                                 else "BF16")
    dtype = DTYPES.get(str(dtype).lower(), str(dtype).upper())
    if dtype not in ("BF16", "F16", "F32"):
        raise BlackholesError(f"--dtype must be bf16, f16 or f32, got {dtype}")
    n = tokens if tokens is not None else _default_tokens(c, t)
    if not isinstance(n, int) or n < 2:
        raise BlackholesError(f"--tokens must be at least 2 (a hole needs two rows), got {n}")
    if t is not None and t.tokens > n:
        raise BlackholesError(f"--tokens {n:,} is fewer than the target's {t.tokens:,} tokens in holes")
    if n * width > MAX_ELEMENTS:
        raise BlackholesError(f"{n:,} tokens x {width:,} dims is too large (at most {MAX_ELEMENTS:,} values)")
    return CoarseningOptions(grid, seed_list, c, n, width, dtype, t)


def _width(c: Centre, t: Target | None, dim) -> int:
    own = None if c.values is None else len(c.values)
    other = t.shape[1] if t is not None and t.shape else None
    if own is not None and other is not None and own != other:
        raise BlackholesError(f"the centre has {own:,} dims but the target's matrix has {other:,}")
    width = dim if dim is not None else (own or other or DEFAULT_DIM)
    if not isinstance(width, int) or width < 1:
        raise BlackholesError(f"--dim must be a positive integer, got {width}")
    if own is not None and width != own:
        raise BlackholesError(f"--dim {width:,} differs from the centre's {own:,} dims")
    return width


def _default_tokens(c: Centre, t: Target | None) -> int:
    if t is not None:
        return max(2, t.tokens + (t.halo or 0))
    if c.kind == "mask":
        from blackholes.io.safetensors import read_header

        count = read_header(c.path).metadata.get("black_hole_tokens", "")
        if count.isdigit() and int(count) >= 2:
            return int(count)
    return DEFAULT_TOKENS


def coarsening_sweep(sigmas, seeds=(0,), *, centre="random", tokens=None, dim=None, dtype=None, target=None,
                     mode: str = "auto", log=None) -> CoarseningResult:
    """Round ``tokens`` rows around a centre at every σ and seed; count the holes (see the module).

    ``sigmas``: numbers or a grid string (:func:`parse_grid`); ``centre``: ``"random"``, a mask
    file or an array; ``target``: a scan JSON or a list of hole sizes; ``log(line)`` hears
    about each seed. ``mode`` forces the grouping (``"sparse"``/``"dense"``; for tests).

    >>> r = coarsening_sweep([0, 1e-3], seeds=[0], tokens=8, dim=4)
    >>> [p.sizes for p in r.points]
    [[8], []]
    """
    opts = coarsening_options(sigmas, seeds, centre=centre, tokens=tokens, dim=dim, dtype=dtype, target=target)
    return run_sweep(opts, mode=mode, log=log)


def run_sweep(opts: CoarseningOptions, *, mode: str = "auto", log=None) -> CoarseningResult:
    """:func:`coarsening_sweep` on checked options."""
    t0 = time.perf_counter()
    points = []
    for seed in opts.seeds:
        t_seed = time.perf_counter()
        draw, eps = draw_noise(seed, opts.tokens, opts.dim)
        cloud = make_cloud(opts.centre.at_seed(draw), eps, opts.dtype)
        for sigma, holes, ulps in coarsen(cloud, opts.sigmas, mode=mode):
            sizes = [len(h) for h in holes]
            distance = None if opts.target is None else size_distance(sizes, opts.target.sizes)
            points.append(CoarseningPoint(sigma, seed, len(sizes), sum(sizes), max(sizes, default=0), sizes, ulps,
                                          distance))
        if log is not None:
            log(f"  seed {seed}: {len(opts.sigmas):,} sigma values in {time.perf_counter() - t_seed:.1f} s")
    points.sort(key=lambda p: (p.sigma, p.seed))
    return CoarseningResult(opts.centre, opts.dtype, opts.tokens, opts.dim, opts.sigmas, opts.seeds, points,
                            opts.target, time.perf_counter() - t0)


# ---------------------------------------------------------------------------- the command: blackholes sweep --no-train

OPTIONS = ("--no-train", "--centre", "--tokens", "--target", "--dtype", "--dim")


def add_coarsening_arguments(parser) -> None:
    """Declare ``--no-train --centre --tokens --target --dtype --dim`` on the sweep's parser.

    An option the parser already has (say the training sweep's own ``--dtype``) is left as it
    is, so call this after declaring the training options. The sweep's grid comes from the
    parser's own ``--sigma`` (numbers or :func:`parse_grid` strings), ``--seed``/``--seeds``,
    ``--out DIR``, and, when declared, ``--quiet`` and ``--force``.

    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_coarsening_arguments(p)
    >>> a = p.parse_args(["--no-train", "--centre", "random", "--tokens", "2200"]); a.no_train, a.tokens
    (True, 2200)
    """
    have = set(getattr(parser, "_option_string_actions", {}))
    group = parser.add_argument_group("coarsening, no training (--no-train)")
    declared = {
        "--no-train": dict(action="store_true", help="no training: round noisy copies of one centre to the dtype "
                                                   "and count the holes rounding alone makes, per sigma and seed"),
        "--centre": dict(metavar="MASK.safetensors|random", default="random",
                         help="where the rows start: the largest hole's vector of a `scan --mask` file, or random "
                              "(c = 0.02 N(0,1) per seed, the `train --init centre` point; default)"),
        "--tokens": dict(type=int, metavar="N", help="rows (default: the target's hole tokens plus its halo, else "
                                                     "the mask's black-hole tokens, else %d)" % DEFAULT_TOKENS),
        "--target": dict(metavar="SCAN.json", help="a real model's `scan --json`: compare the hole sizes, pick the "
                                                   "closest sigma"),
        "--dtype": dict(metavar="bf16|f16|f32", help="the grid the rows are rounded to (default: the centre's grid, "
                                                     "else the target's dtype, else bf16)"),
        "--dim": dict(type=int, metavar="D", help=f"width with --centre random (default: the target's, else {DEFAULT_DIM})"),
    }
    for option in OPTIONS:
        if option not in have:
            group.add_argument(option, **declared[option])


def coarsening_parser():
    """A stand-alone parser for the coarsening sweep (the options above plus ``--sigma --seed --out
    --quiet --force``), for scripts and tests; ``blackholes sweep --no-train`` uses the sweep's own.

    >>> coarsening_parser().parse_args(["--sigma", "0,1e-5", "--out", "d"]).sigma
    ['0,1e-5']
    """
    import argparse

    p = argparse.ArgumentParser(prog="blackholes sweep --no-train")
    p.add_argument("--sigma", nargs="+", default=[DEFAULT_SIGMAS], help="sigma values and ranges (parse_grid)")
    p.add_argument("--seed", nargs="+", default=[DEFAULT_SEEDS], help="seeds, e.g. 0,1,2")
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--force", action="store_true")
    add_coarsening_arguments(p)
    return p


def options_from_args(args) -> CoarseningOptions:
    """The sweep's options from parsed arguments (the sweep parser's or :func:`coarsening_parser`'s)."""
    sigmas = _first_set(args, ("sigma", "sigmas"), DEFAULT_SIGMAS)
    seeds = _first_set(args, ("seeds", "seed"), DEFAULT_SEEDS)
    return coarsening_options(sigmas, seeds, centre=getattr(args, "centre", None) or "random",
                              tokens=getattr(args, "tokens", None), dim=getattr(args, "dim", None),
                              dtype=getattr(args, "dtype", None), target=getattr(args, "target", None))


def _first_set(args, names, default):
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value != []:
            return value
    return default


COARSENING_FILES = ("coarsening.json", "coarsening.md", "coarsening.html")


def run_coarsening(args) -> int:
    """``blackholes sweep --no-train``: check everything, sweep, write ``DIR/coarsening.*``, print the answer.

    Writes ``coarsening.json`` (:meth:`CoarseningResult.to_json`), ``coarsening.md``,
    ``coarsening.html`` and ``plots/coarsening_*.png``. Refuses (one line, before any work) a
    bad grid, centre or target, and an earlier ``coarsening.json`` in DIR without ``--force``.
    """
    opts = options_from_args(args)
    out = Path(args.out)
    inputs = [p for p in (opts.centre.path, opts.target.path if opts.target else None) if p]
    _check_out_dir(out, inputs, force=bool(getattr(args, "force", False)))
    quiet = bool(getattr(args, "quiet", False))
    log = None if quiet else (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))  # one write: see cli.common.log_line
    if log:
        log(f"Coarsening sweep: {len(opts.sigmas):,} sigma x {len(opts.seeds):,} seeds, {opts.tokens:,} rows x "
            f"{opts.dim:,} dims rounded to {opts.dtype}, around " + opts.centre.describe().replace("`", ""))
    result = run_sweep(opts, log=log)
    from blackholes.io.atomic import write_json
    from blackholes.render.coarsening import coarsening_summary, write_coarsening_report

    data = result.to_json()
    write_json(out / "coarsening.json", data)
    write_coarsening_report(out, data)
    if not quiet:
        print(coarsening_summary(data))
    print(f"Report: {out / 'coarsening.html'}  (also coarsening.md, coarsening.json; all files in {out}/)")
    return 0


def _check_out_dir(out: Path, inputs: list[str], *, force: bool) -> None:
    """DIR may be new or an existing folder; its coarsening files must be writable and not inputs."""
    from blackholes.io.paths import check_outputs

    if out.exists() and not out.is_dir():
        raise BlackholesError(f"--out {out} exists and is not a folder")
    if not out.exists() and not out.parent.is_dir():
        raise BlackholesError(f"--out {out}: its folder {out.parent} does not exist")
    if (out / "coarsening.json").exists() and not force:
        raise BlackholesError(f"{out} already holds a coarsening sweep (coarsening.json); pass --force to replace it, "
                              "or choose another --out")
    if out.exists():
        check_outputs([out / name for name in COARSENING_FILES], inputs=inputs)
        return
    try:
        out.mkdir()
    except OSError as e:
        raise BlackholesError(f"cannot create --out {out}: {e.strerror or e}") from None
