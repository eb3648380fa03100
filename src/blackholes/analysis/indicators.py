"""Under-trained token indicators: row norms and the "Fishing for Magikarp" cosine distance.

Land & Bartolo (2024) flag under-trained tokens by how close their row sits to the
rows known to be dead, once the direction every row shares is removed. For a row
``x`` (one token), with ``p`` the matrix's first principal component (unit, of the
mean-centred rows) and ``r`` the mean of a reference set of known-dead rows::

    x' = x - (x . p) p          r' = r - (r . p) p
    cosine_to_reference(x) = 1 - x' . r' / (|x'| |r'|)          in [0, 2]

**Low means dead**: a cosine distance near 0 says the row points where the known-dead
rows point (Magikarp's "E_out cosine distance w/o 1st PC"; they flag the tokens *below*
a low percentile). ``norm(x) = |x|`` (L2) is the fallback: also low means dead (an input
embedding row that training never touched keeps its small initial norm; Magikarp's
"E_in L2 norm"). ``main`` is "cosine_to_reference" when there is a usable reference set,
else "norm".

The reference set is found, never hand-picked: the members of the exact holes, the
padding rows (beyond the tokenizer), and the tokens whose type says unused/reserved;
``reference=IDS`` overrides it. The principal component is fitted on the rows outside
the exact holes: a hole repeats one vector hundreds of times and would otherwise *be*
the first component. Candidates are the tokens (not hole members, not padding) whose
main indicator is at or below the ``percentile``-th percentile of theirs, most dead first.

Cost: the PCA is :func:`blackholes.analysis.pca.pca_sets` with ``k=1``: ``n_iter``
power passes and one projecting pass (3 by default; ``n_iter=1`` saves one, but on
synthetic power-law spectra it changed 12-30% of the 2% candidates against an exact PCA,
``n_iter=2`` at most 1%),
plus the magnitude check ``pca_sets`` makes first -- ``passes`` counts every read. The row
norms and every ``x . r`` are gathered during the first read; rows are read a chunk at a
time (float32 storage in place), so no float32 copy of the whole matrix is ever made.

>>> x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
>>> x[[3, 7, 9]] = x[3] * 0.01                   # three dead rows: one tiny shared vector
>>> ind = indicators(x, holes=[[3, 7, 9]])
>>> ind.main, ind.reference.tolist()
('cosine_to_reference', [3, 7, 9])
>>> bool(ind.norm[3] < ind.norm[4]), round(float(ind.cosine_to_reference[7]), 6)
(True, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from blackholes import defaults
from blackholes.errors import BlackholesError

MAINS = ("cosine_to_reference", "norm")
# x . p comes from float32 products (~1e-6 of |x|), so the part of a row off the principal
# component is known to ~1% once it is 1% of the row's norm; below that it has no reliable direction.
_FLAT = 1e-2


# ------------------------------------------------------------------------------ result


@dataclass
class Indicators:
    """Per-row indicators of a matrix (arrays indexed by row id), the reference set, the candidates.

    >>> ind = indicators("model.safetensors", holes=scan_result.groups)   # doctest: +SKIP
    >>> ind.main, ind.candidates[:5], ind.values()[ind.candidates[:5]]     # doctest: +SKIP
    """

    main: str  # "cosine_to_reference" or "norm"
    norm: np.ndarray  # float64 [V]: L2 norm of every row
    cosine_to_reference: np.ndarray | None  # float64 [V], NaN where undefined; None without a reference
    reference: np.ndarray  # int64 row ids whose mean is r
    reference_from: dict  # how the reference was found: {"given": n} or {"holes": a, "padding": b, "unused": c}
    percentile: float
    threshold: float | None  # the percentile of the main indicator over the eligible rows
    candidates: np.ndarray  # int64 row ids, most dead first (ties by id)
    eligible: np.ndarray = field(repr=False, default=None)  # bool [V]: rows that may be candidates
    fit_rows: int = 0  # rows the principal component was fitted on
    pc1_explained_variance_ratio: float | None = None
    n_iter: int = 0
    passes: float = 0.0  # reads of the whole matrix
    note: str = ""

    def values(self, name: str | None = None) -> np.ndarray:
        """The per-row values of indicator ``name`` (the main one by default)."""
        name = name or self.main
        if name not in MAINS:
            raise BlackholesError(f"unknown indicator {name!r}; indicators: {', '.join(MAINS)}")
        out = self.norm if name == "norm" else self.cosine_to_reference
        if out is None:
            raise BlackholesError("no cosine_to_reference indicator: there was no reference set")
        return out

    def to_json(self, categories=None) -> dict:
        """Everything, per-row arrays as lists indexed by row id (null where undefined);
        with ``categories`` (:class:`blackholes.analysis.vocabulary.Categories`) each
        candidate also carries its text, category, script and round trip."""
        main = self.values()
        out = {
            "main": self.main,
            "low_means_dead": True,
            "percentile": self.percentile,
            "threshold": _num(self.threshold),
            "candidates": [self._candidate(int(i), main, categories) for i in self.candidates],
            "reference": {"ids": self.reference.tolist(), "size": len(self.reference), "from": self.reference_from},
            "pca": {"fit_rows": self.fit_rows, "pc1_explained_variance_ratio": _num(self.pc1_explained_variance_ratio),
                    "n_iter": self.n_iter, "passes": round(self.passes, 3)},
            "norm": _list(self.norm),
            "cosine_to_reference": None if self.cosine_to_reference is None else _list(self.cosine_to_reference),
        }
        if self.note:
            out["note"] = self.note
        return out

    def _candidate(self, i: int, main: np.ndarray, categories) -> dict:
        out = {"id": i, "value": _num(main[i]), "norm": _num(self.norm[i])}
        if categories is not None and i in categories:
            info = categories[i]
            out.update(text=info.text, category=info.category, script=info.script, round_trip=info.round_trip)
        return out


def _num(v) -> float | None:
    """A JSON number with 7 significant digits (the precision of float32), or None for NaN/None."""
    if v is None or not np.isfinite(v):
        return None
    return float(f"{float(v):.7g}")


def _list(a: np.ndarray) -> list:
    return [_num(v) for v in a.tolist()]


# ------------------------------------------------------------------------------ reading rows


class _TappedRows:
    """A Matrix's rows as float32 for :func:`~blackholes.analysis.pca.pca_sets`, read through ``Matrix.float_rows``
    (so bf16 is widened and GGUF blocks dequantised one chunk at a time). The first time
    each row is read it is also multiplied by ``taps`` [D, m], which gathers ``x . r``
    for every row during the PCA's first pass instead of in a pass of its own."""

    def __init__(self, matrix, taps: np.ndarray | None):
        self.matrix = matrix
        self.shape = matrix.shape
        self.ndim = 2
        self.dtype = np.dtype(np.float32)
        self.taps = None if taps is None else np.ascontiguousarray(taps, dtype=np.float32)
        self.tapped = None if taps is None else np.zeros((self.shape[0], self.taps.shape[1]))
        self._seen = np.zeros(self.shape[0], bool)
        self.rows_read = 0

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("rows are read as contiguous slices")
        start, stop, _ = key.indices(self.shape[0])
        x = _float32_rows(self.matrix, start, stop)
        self.rows_read += stop - start
        if self.taps is not None and not self._seen[start:stop].all():
            self.tapped[start:stop] = x @ self.taps
            self._seen[start:stop] = True
        return x

    @property
    def passes(self) -> float:
        return self.rows_read / max(1, self.shape[0])


def _float32_rows(matrix, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as float32 values: float32 storage is used in place (a view of the
    memory map; ``Matrix.float_rows`` copies it), everything else through ``float_rows``."""
    return matrix.value_rows(start, stop)


def _runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique ids as ``(start, stop)`` runs of consecutive rows."""
    if len(ids) == 0:
        return []
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(ids)]])
    return [(int(ids[a]), int(ids[b - 1]) + 1) for a, b in zip(starts, stops)]


def _mean_of_rows(matrix, ids: np.ndarray) -> np.ndarray:
    """float64 mean of rows ``ids`` (sorted, unique), read run by run (a few rows, not a pass)."""
    total = np.zeros(matrix.shape[1])
    for start, stop in _runs(ids):
        total += _float32_rows(matrix, start, stop).sum(axis=0, dtype=np.float64)
    return total / len(ids)


def _norms_only(matrix) -> np.ndarray:
    """L2 norm of every row, in one chunked pass."""
    from blackholes.sources.matrix import row_chunks

    V = matrix.shape[0]
    out = np.empty(V)
    for start, stop in row_chunks(V, max(1, matrix.array.nbytes // max(1, V))):
        x = _float32_rows(matrix, start, stop)
        out[start:stop] = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    return np.sqrt(out)


# ------------------------------------------------------------------------------ inputs


def _ids(values, V: int, what: str) -> np.ndarray:
    """Sorted unique int64 row ids, each checked to lie in [0, V)."""
    a = np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values).astype(np.int64))
    if len(a) and (a[0] < 0 or a[-1] >= V):
        bad = int(a[0] if a[0] < 0 else a[-1])
        raise BlackholesError(f"{what} id {bad} is out of range: the matrix has {V:,} rows (ids 0-{V - 1:,})")
    return a


def _hole_ids(holes, V: int) -> np.ndarray:
    """Members of the exact holes: groups as id lists, arrays, or objects with ``token_ids``."""
    parts = [np.asarray(getattr(g, "token_ids", g), dtype=np.int64).ravel() for g in holes]
    return _ids(np.concatenate(parts) if parts else np.zeros(0, np.int64), V, "hole member")


def _check_percentile(percentile) -> float:
    try:
        p = float(percentile)
    except (TypeError, ValueError):
        raise BlackholesError(f"--percentile must be a number between 0 and 100, got {percentile!r}") from None
    if not 0 < p < 100:
        raise BlackholesError(f"--percentile must lie strictly between 0 and 100, got {percentile}")
    return p


def _reference(reference, holes: np.ndarray, padding: np.ndarray, unused: np.ndarray, V: int):
    """(reference ids, how they were found)."""
    if reference is not None:
        ref = _ids(reference, V, "--reference")
        if len(ref) == 0:
            raise BlackholesError("--reference names no row ids")
        return ref, {"given": int(len(ref))}
    ref = np.union1d(np.union1d(holes, padding), unused).astype(np.int64)
    return ref, {"holes": int(len(holes)), "padding": int(len(padding)), "unused": int(len(unused))}


# ------------------------------------------------------------------------------ the indicators


def indicators(
    matrix,
    *,
    reference: Iterable[int] | None = None,
    holes: Iterable = (),
    padding: Iterable[int] = (),
    unused: Iterable[int] = (),
    percentile: float = defaults.PERCENTILE,
    n_iter: int = 2,
    dtype: str | None = None,
    progress: bool = False,
) -> Indicators:
    """Row norms and the Magikarp cosine distance of every row; candidates below ``percentile``.

    ``matrix``: a :class:`blackholes.sources.matrix.Matrix` (or anything ``as_matrix``
    takes: a path, a 2-D array with ``dtype``). ``holes``: the exact groups (id lists, or
    ``ScanResult.groups``); ``padding``: rows beyond the tokenizer; ``unused``: tokens whose
    type says unused/reserved (``Categories.ids_with("unused")``). Together they are the
    reference set unless ``reference`` names it. ``n_iter``: power passes of the PCA.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((300, 8)).astype(np.float32)
    >>> x[[10, 11, 12, 42]] = x[0] + 0.01 * rng.standard_normal((4, 8)).astype(np.float32)
    >>> ind = indicators(x, unused=[10, 11, 12])     # 10-12 are known unused; 0 and 42 are found
    >>> ind.main, ind.candidates.tolist()
    ('cosine_to_reference', [0, 10, 11, 12, 42, 4])
    """
    from blackholes.sources.load import as_matrix

    m = as_matrix(matrix, dtype=dtype)
    V, D = m.shape
    p = _check_percentile(percentile)
    if int(n_iter) < 1:
        raise BlackholesError(f"n_iter must be at least 1, got {n_iter}")
    hole = _hole_ids(holes, V)
    pad = _ids(padding, V, "padding row")
    ref, found = _reference(reference, hole, pad, _ids(unused, V, "unused token"), V)

    fit = np.ones(V, bool)
    fit[hole] = False
    r = _mean_of_rows(m, ref) if len(ref) else None
    norm, cosine, evr, passes, note = _measure(m, r, fit, int(n_iter), progress)
    main = "cosine_to_reference" if cosine is not None else "norm"
    if not len(ref):
        note = note or "no reference set (no holes, padding or unused tokens): the row norm is the main indicator"

    eligible = np.ones(V, bool)
    eligible[hole] = False
    eligible[pad] = False
    values = cosine if cosine is not None else norm
    threshold, candidates = _candidates(values, eligible, p)
    return Indicators(main=main, norm=norm, cosine_to_reference=cosine, reference=ref, reference_from=found,
                      percentile=p, threshold=threshold, candidates=candidates, eligible=eligible,
                      fit_rows=int(fit.sum()), pc1_explained_variance_ratio=evr, n_iter=int(n_iter),
                      passes=passes, note=note)


def _measure(m, r: np.ndarray | None, fit: np.ndarray, n_iter: int, progress: bool):
    """(norms, cosine distances or None, PC1's share of the variance, passes, note)."""
    from blackholes.analysis.pca import pca_sets

    V, D = m.shape
    if D < 2 or fit.sum() < 2:
        why = "the matrix has one column" if D < 2 else "fewer than 2 rows lie outside the holes"
        note = f"no principal component to remove ({why}): the row norm is the main indicator"
        return _norms_only(m), None, None, 1.0, note
    view = _TappedRows(m, None if r is None else r[:, None])
    (proj,), norms = pca_sets(view, "F32", rows=[fit], k=1, n_iter=n_iter, progress=progress)
    evr = float(proj.explained_variance_ratio[0])
    if r is None:
        return norms, None, evr, view.passes, ""
    pc = proj.components[0].astype(np.float64)
    xp = proj.coords[:, 0].astype(np.float64) + float(proj.mean @ pc)  # x . p (coords are centred)
    xr = view.tapped[:, 0]
    cosine, note = _cosine_distance(norms, xp, xr, r, pc)
    return norms, cosine, evr, view.passes, note


def _cosine_distance(norms, xp, xr, r, pc):
    """1 - x'.r' / (|x'| |r'|) from |x|, x.p, x.r: the residuals are never formed.

    Rows with (almost) nothing off the principal component get NaN (no direction);
    a reference mean with nothing off it makes the whole indicator undefined (None).
    """
    rp = float(r @ pc)
    r_sq = float(r @ r)
    r_res = np.sqrt(max(r_sq - rp * rp, 0.0))
    if not r_res > _FLAT * max(np.sqrt(r_sq), float(np.median(norms)) if len(norms) else 0.0):
        return None, ("the reference rows' mean has no component off the first principal direction "
                      "(all zero?): the row norm is the main indicator")
    x_sq = norms * norms
    x_res = np.sqrt(np.maximum(x_sq - xp * xp, 0.0))
    flat = x_res <= _FLAT * norms
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (xr - xp * rp) / (x_res * r_res)
    dist = 1.0 - np.clip(cos, -1.0, 1.0)
    dist[flat] = np.nan
    return dist, ""


def _candidates(values: np.ndarray, eligible: np.ndarray, percentile: float):
    """(threshold, ids at or below it): the percentile over eligible rows with a value; rows
    whose value is undefined (NaN: a row with no direction left) count as most dead."""
    rows = np.flatnonzero(eligible)
    if len(rows) == 0:
        return None, np.zeros(0, np.int64)
    v = values[rows]
    finite = np.isfinite(v)
    if not finite.any():
        return None, rows
    threshold = float(np.percentile(v[finite], percentile))
    picked = rows[~finite | (v <= threshold)]
    key = np.where(np.isfinite(values[picked]), values[picked], -np.inf)
    order = np.lexsort((picked, key))
    return threshold, picked[order].astype(np.int64)
