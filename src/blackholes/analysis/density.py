"""Density maps of embedding space: randomised PCA, 2-D histograms, row norms.

Black holes are extreme density spikes: hundreds of tokens on one point. A
density map of embedding space drawn without the black-hole mask is dominated
by them; drawn with it, the rest of the vocabulary becomes visible. This module
computes both maps for one matrix in a few streaming passes (numpy only): the
PCA of all rows and of the rows outside the mask come from the same passes of
:func:`blackholes.analysis.pca.pca_sets`.

>>> m = density_map("model.safetensors", auto_mask=True)   # the Qwen3-4B stand-in: (2282, 48)
>>> m.peak_bin_count(), m.peak_bin_count(masked=True)
(8, 1)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from blackholes.analysis.pca import Projection, default_dtype, pca_sets
from blackholes import defaults
from blackholes.errors import BlackholesError

# ------------------------------------------------------------------ density map


@dataclass
class Histogram2D:
    """Token counts on a regular grid: ``counts[i, j]`` tokens in x bin i, y bin j."""

    counts: np.ndarray  # int64 [bins, bins]
    xedges: np.ndarray
    yedges: np.ndarray
    outside: int  # tokens beyond the plotted range (extreme outliers)

    @property
    def peak(self) -> int:
        return int(self.counts.max()) if self.counts.size else 0


def histogram2d(coords: np.ndarray, *, bins: int = 200, clip: float = 5e-4) -> Histogram2D:
    """2-D histogram of [n, 2] coordinates over the central ``1 - 2*clip`` of each axis.

    The range is widened by 5 % so no kept point sits on the frame; tokens beyond
    it are counted in ``outside`` (never silently dropped).
    """
    ranges = []
    for a in range(2):
        lo, hi = np.quantile(coords[:, a], [clip, 1 - clip]) if len(coords) else (0.0, 1.0)
        pad = 0.05 * (hi - lo) or max(abs(hi), 1e-12) * 0.05 or 1.0
        ranges.append((float(lo - pad), float(hi + pad)))
    counts, xe, ye = np.histogram2d(coords[:, 0], coords[:, 1], bins=bins, range=ranges)
    counts = counts.astype(np.int64)
    return Histogram2D(counts, xe, ye, outside=int(len(coords) - counts.sum()))


@dataclass
class DensityMap:
    """Everything a density-map figure shows, for one matrix.

    ``full`` is the PCA of all rows; ``masked`` (when a mask was given) the PCA of
    the rows outside the mask, with its own histogram.
    """

    source: str
    key: str
    shape: tuple[int, int]
    dtype: str
    norms: np.ndarray  # [V] L2 norm of every row
    full: Projection
    hist_full: Histogram2D
    mask: np.ndarray | None = None  # [V] True = black-hole token
    black_hole_id: np.ndarray | None = None  # [V] 0 = none, 1 = largest group
    masked: Projection | None = None
    hist_masked: Histogram2D | None = None
    mask_source: str | None = None  # "scan" or the mask file's path
    seconds: dict = field(default_factory=dict)

    @property
    def black_hole_tokens(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0

    def group_sizes(self) -> list[tuple[int, int, int]]:
        """``(id, size, first_token)`` of every black-hole group, largest first."""
        if self.black_hole_id is None:
            return []
        ids = self.black_hole_id
        sizes = np.bincount(ids, minlength=1)
        out = []
        for gid in np.flatnonzero(sizes[1:]) + 1:
            out.append((int(gid), int(sizes[gid]), int(np.argmax(ids == gid))))
        out.sort(key=lambda t: (-t[1], t[0]))
        return out

    def peak_bin_count(self, masked: bool = False) -> int:
        """Tokens in the densest bin of the map without (or with) the mask."""
        h = self.hist_masked if masked else self.hist_full
        return h.peak if h is not None else 0

    def to_json(self) -> dict:
        out = {
            "source": self.source,
            "key": self.key,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "black_hole_tokens": self.black_hole_tokens,
            "mask_source": self.mask_source,
            "bins": int(self.hist_full.counts.shape[0]),
            "without_mask": {
                **self.full.to_json(),
                "peak_bin_count": self.peak_bin_count(),
                "tokens_outside_plot": self.hist_full.outside,
            },
            "norms": {
                "min": float(self.norms.min()),
                "median": float(np.median(self.norms)),
                "max": float(self.norms.max()),
            },
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }
        if self.masked is not None:
            out["with_mask"] = {
                **self.masked.to_json(),
                "peak_bin_count": self.peak_bin_count(masked=True),
                "tokens_outside_plot": self.hist_masked.outside,
            }
            out["groups"] = [{"id": g, "size": s, "first_token": t} for g, s, t in self.group_sizes()]
        return out


def read_mask(path: str | os.PathLike, vocab: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``mask`` (and ``black_hole_id`` if present) from a scan mask file; check length.

    >>> from blackholes import scan
    >>> scan("model.safetensors").save_mask("mask.safetensors")
    >>> mask, ids = read_mask("mask.safetensors", 64)
    >>> int(mask.sum()), int(ids[40])
    (12, 2)
    """
    from blackholes.io.safetensors import open_tensor, read_header

    header = read_header(path)
    if "mask" not in header.tensors:
        keys = ", ".join(sorted(header.tensors)) or "(none)"
        raise BlackholesError(f"{path} has no 'mask' tensor (keys: {keys}); write one with `blackholes scan --mask`")
    mask = np.asarray(open_tensor(path, "mask", header))
    if mask.ndim != 1 or mask.shape[0] != vocab:
        raise BlackholesError(
            f"mask in {path} has shape {list(mask.shape)} but the matrix has {vocab} rows; "
            "was it made for another model?"
        )
    if mask.dtype != np.bool_:
        mask = mask != 0
    mask = np.array(mask, dtype=bool)
    if "black_hole_id" not in header.tensors:
        return mask, None
    return mask, _checked_ids(open_tensor(path, "black_hole_id", header), mask, path)


def _checked_ids(raw: np.ndarray, mask: np.ndarray, path) -> np.ndarray:
    """A mask file's ``black_hole_id``: integers, 0 exactly where ``mask`` is False, ids 1..rows."""
    where = f"black_hole_id in {path}"
    if raw.ndim != 1 or raw.shape[0] != mask.shape[0]:
        raise BlackholesError(f"{where} has shape {list(raw.shape)}, expected [{mask.shape[0]}] like its mask")
    if raw.dtype.kind not in "iu":
        raise BlackholesError(f"{where} must hold integers, not {raw.dtype}")
    ids = np.asarray(raw).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > mask.shape[0]):
        raise BlackholesError(f"{where} holds ids outside 0-{mask.shape[0]} (found {ids.min()} to {ids.max()})")
    disagree = np.flatnonzero((ids > 0) != mask)
    if disagree.size:
        t = int(disagree[0])
        raise BlackholesError(f"{where} disagrees with its mask at {disagree.size:,} rows (first: row {t}, "
                              f"mask {bool(mask[t])}, id {int(ids[t])}); rewrite it with `blackholes scan --mask`")
    return ids


def density_map(
    source,
    *,
    key: str | None = None,
    matrix: str | None = None,
    dtype: str | None = None,
    mask: np.ndarray | str | os.PathLike | None = None,
    black_hole_id: np.ndarray | None = None,
    auto_mask: bool = False,
    bins: int | None = None,
    n_iter: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> DensityMap:
    """Project a matrix onto its two leading principal directions, without and with a mask.

    ``source``: anything :func:`blackholes.sources.load_matrix` accepts, a loaded
    ``Matrix``, or a 2-D numpy array (``dtype`` its safetensors dtype). ``mask``: a
    boolean array [V] or the path of a ``blackholes scan --mask`` file;
    ``auto_mask=True`` scans the same loaded matrix for black holes instead.

    >>> m = density_map("org/tiny", auto_mask=True)
    >>> m.black_hole_tokens, m.peak_bin_count(), m.peak_bin_count(masked=True)
    (12, 8, 1)
    """
    import time

    if mask is not None and auto_mask:
        raise BlackholesError("give either a mask or auto_mask=True, not both")
    t0 = time.perf_counter()
    array, dtype, src, tensor_key, loaded = _resolve(source, key=key, matrix=matrix, dtype=dtype)
    # a block-quantised matrix is projected from its values (dequantised chunk by chunk), never its bytes
    values, values_dtype = (loaded.values(), "F32") if getattr(loaded, "dequantize", None) else (array, dtype)
    V, D = values.shape
    seconds = {"load": time.perf_counter() - t0}

    mask, black_hole_id, mask_source = _resolve_mask(mask, black_hole_id, auto_mask, loaded, array, dtype, V,
                                                     seconds)
    if mask is not None and (~mask).sum() < 2:
        raise BlackholesError(f"the mask leaves {int((~mask).sum())} of {V} rows; nothing to map")

    if bins is None:
        bins = default_bins(V)
    t = time.perf_counter()
    # an empty mask would only repeat the first map
    sets = [None] if mask is None or not mask.any() else [None, ~mask]
    projections, norms = pca_sets(values, values_dtype, rows=sets, k=2, n_iter=n_iter, seed=seed,
                                  progress=progress)
    seconds["pca"] = time.perf_counter() - t

    full = projections[0]
    out = DensityMap(
        source=src,
        key=tensor_key,
        shape=(V, D),
        dtype=dtype,
        norms=norms,
        full=full,
        hist_full=histogram2d(full.coords, bins=bins),
        mask=mask,
        black_hole_id=black_hole_id,
        mask_source=mask_source,
        seconds=seconds,
    )
    if len(projections) > 1:
        kept = projections[1]
        out.masked = kept
        out.hist_masked = histogram2d(kept.coords[~mask], bins=bins)
    out.seconds["total"] = time.perf_counter() - t0
    return out


def _resolve_mask(mask, black_hole_id, auto_mask: bool, loaded, array: np.ndarray, dtype: str, V: int,
                  seconds: dict):
    """(mask [V] bool or None, black_hole_id or None, where the mask came from) for :func:`density_map`.

    ``auto_mask`` scans the loaded matrix (its time goes into ``seconds["scan"]``); a path is
    read as a ``blackholes scan --mask`` file; hole ids are found exactly when none are given.
    """
    import time

    mask_source = None
    if auto_mask:
        from blackholes.analysis.groups import scan

        t = time.perf_counter()
        result = scan(loaded if loaded is not None else array, dtype=dtype)
        mask, black_hole_id = np.asarray(result.mask, bool), np.asarray(result.black_hole_id, np.int64)
        mask_source = "scan"
        seconds["scan"] = time.perf_counter() - t
    elif isinstance(mask, (str, os.PathLike)):
        mask_source = str(mask)
        mask, ids = read_mask(mask, V)
        black_hole_id = black_hole_id if black_hole_id is not None else ids
    elif mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != (V,):
            raise BlackholesError(f"mask has shape {list(mask.shape)} but the matrix has {V} rows")
        mask_source = "array"
    if mask is not None and black_hole_id is None:
        black_hole_id = _ids_from_mask(array, mask)
    return mask, black_hole_id, mask_source


def default_bins(rows: int) -> int:
    """Histogram bins per axis: ~4 sqrt(rows), between 24 (tiny vocabularies) and 200 (``defaults.MAP_BINS``)."""
    low, high = defaults.MAP_BINS
    return int(min(high, max(low, 4 * np.sqrt(rows))))


def _ids_from_mask(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Group ids for masked rows by their raw bits (a mask file without ``black_hole_id``).

    Id 1 = largest group of identical masked rows (ties: smallest row first, as
    :func:`blackholes.analysis.exact.find_groups` orders them); masked rows that match no
    other masked row follow, one id each, in row order.

    >>> _ids_from_mask(np.array([[1], [2], [1], [3]], np.float32), np.array([True, True, True, False]))
    array([1, 2, 1, 0])
    """
    from blackholes.analysis.exact import find_groups

    ids = np.zeros(mask.shape[0], dtype=np.int64)
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return ids
    groups = find_groups(np.ascontiguousarray(array[rows]))
    for gid, members in enumerate(groups, start=1):
        ids[rows[members]] = gid
    alone = rows[ids[rows] == 0]
    ids[alone] = np.arange(len(groups) + 1, len(groups) + 1 + len(alone))
    return ids


def _resolve(source, *, key, matrix, dtype):
    """(array, dtype name, source string, key, Matrix or None) for any accepted source."""
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim != 2:
            raise BlackholesError(f"expected a 2-D matrix, got shape {list(arr.shape)}")
        return arr, dtype or default_dtype(arr), "array", key or "", None
    from blackholes.sources import load_matrix

    loaded = source if hasattr(source, "array") and hasattr(source, "dtype") else load_matrix(
        source, key=key, matrix=matrix
    )
    return loaded.array, loaded.dtype, str(loaded.source), loaded.key, loaded


# ------------------------------------------------------------------ the map of a scan



class _ValueRows:
    """A quantised matrix's rows as float32 values, a chunk at a time (what the PCA reads)."""

    def __init__(self, m):
        self.m, self.shape, self.ndim, self.dtype = m, m.shape, 2, np.dtype(np.float32)

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("rows are read as contiguous slices")
        start, stop, _ = key.indices(self.shape[0])
        return self.m.float_rows(start, stop)


def _matrix_for(r, given):
    """(the scanned Matrix or None, why not): the one given, else read again from ``r.source``."""
    from blackholes.sources.load import as_matrix

    given = given if given is not None else getattr(r, "source_matrix", None)  # what scan() read
    if given is not None:
        m = as_matrix(given, dtype=r.dtype if isinstance(given, np.ndarray) else None)
    elif r.format == "array" or r.source in (None, "<array>"):
        return None, "the matrix was scanned from memory; pass it as write_report(..., matrix=...)"
    elif r.bytes_read is not None:
        return None, "the matrix was fetched over the network and is not fetched twice; pass matrix="
    else:
        try:
            m = _reload(r)
        except BlackholesError as e:
            return None, f"the matrix could not be read again: {e}"
    if tuple(m.shape) != tuple(r.shape) or m.dtype != r.dtype:
        return None, (f"the matrix at hand ({m.shape[0]:,} × {m.shape[1]:,} {m.dtype}) is not the one scanned "
                      f"({r.shape[0]:,} × {r.shape[1]:,} {r.dtype})")
    if m.dequantize is not None:  # the PCA reads float32 values: dequantise a chunk at a time
        from blackholes.sources.matrix import Matrix

        m = Matrix(array=_ValueRows(m), dtype="F32", source=m.source, path=m.path, key=m.key)
    return m, ""


def _reload(r):
    """The matrix ``r`` scanned, memory-mapped again (a training recording: the same step)."""
    from blackholes.sources import load_matrix

    found = re.fullmatch(r"embeddings\[(-?\d+)\]", r.key or "")
    if found and r.path:
        from blackholes.io.safetensors import open_tensor
        from blackholes.sources.load import as_matrix

        return as_matrix(open_tensor(r.path, "embeddings")[int(found[1])], dtype=r.dtype)
    return load_matrix(r.source, key=r.key)




def scan_density(r, matrix=None) -> tuple[DensityMap | None, str]:
    """The density map of the matrix a :class:`~blackholes.analysis.groups.ScanResult` scanned, with its
    black holes masked; (None, why not) when that matrix is not at hand or cannot be mapped.

    ``matrix``: the scanned Matrix or 2-D array; without it the one ``scan()`` kept, else the
    matrix is read again from ``r.source`` (a file is memory-mapped, nothing is fetched twice).
    """
    m, why = _matrix_for(r, matrix)
    if m is None:
        return None, why
    holes = r.black_hole_tokens > 0
    try:
        return density_map(m, mask=np.asarray(r.mask) if holes else None,
                           black_hole_id=np.asarray(r.black_hole_id) if holes else None), ""
    except BlackholesError as e:
        return None, str(e)
