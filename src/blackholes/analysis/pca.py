"""Randomised PCA of an embedding matrix, streamed over its memory map (numpy only).

- the matrix is read in row chunks straight from its memory map (bf16 widened
  chunk by chunk), never copied whole and never centred in memory: the mean is
  subtracted implicitly inside the block matrix products;
- the leading principal directions come from randomised subspace iteration
  (Halko, Martinsson & Tropp 2011) on the covariance, one pass per iteration;
  the PCA of several row sets (all rows, the rows outside a mask) is computed in
  the same passes (each chunk is read once per pass, whatever the number of sets).

The density map (:mod:`blackholes.analysis.density`) and the under-trained
indicators (:mod:`blackholes.analysis.indicators`) both project with it.

>>> x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
>>> x[:, 0] *= 10                     # one direction dominates
>>> p = pca(x)
>>> p.coords.shape, bool(p.explained_variance_ratio[0] > 0.8)
((500, 2), True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from blackholes.errors import BlackholesError

EXACT_DIMS = 64  # matrices this narrow get the exact PCA (the subspace is the whole space)
_CHUNK_BYTES = 32 << 20  # float32 bytes per chunk: large BLAS calls, and two chunks alive stay small


# ----------------------------------------------------------------------------- PCA


@dataclass
class Projection:
    """A PCA fitted on some rows of a matrix, with every row's coordinates.

    ``components`` [k, D] are unit principal directions (largest variance first),
    ``coords`` [V, k] the coordinates of *every* row (also rows not fitted) in the
    embedding's own units, ``rows`` [V] which rows the fit used.
    """

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray  # per component, divided by n - 1
    total_variance: float  # sum over all D directions, divided by n - 1
    coords: np.ndarray
    rows: np.ndarray
    passes: int = 0
    ratio: np.ndarray | None = None  # explained / total, taken in the scaled units (both may underflow as given)

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        if self.ratio is not None:
            return self.ratio
        if self.total_variance <= 0:
            return np.zeros_like(self.explained_variance)
        return self.explained_variance / self.total_variance

    @property
    def n_rows(self) -> int:
        return int(self.rows.sum())

    def to_json(self) -> dict:
        return {
            "rows": self.n_rows,
            "components": int(self.components.shape[0]),
            "explained_variance": [float(v) for v in self.explained_variance],
            "explained_variance_ratio": [float(v) for v in self.explained_variance_ratio],
            "total_variance": float(self.total_variance),
            "passes": self.passes,
        }


def _chunk_rows(dim: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * max(dim, 1)))


def _float_chunk(array: np.ndarray, dtype: str, start: int, stop: int, buffer: np.ndarray | None = None,
                 scale: float = 1.0):
    """Rows ``start:stop`` as float32: a view when stored as float32, else widened.

    bf16 is widened into ``buffer`` in place (the same bits as ``tensors.to_float32``:
    bf16 is the top half of a float32), because fresh 64 MB temporaries per chunk
    and pass cost more than the matrix products themselves.
    """
    chunk = array[start:stop]
    if scale != 1.0:  # extreme magnitudes: widen in float64, scale exactly, then float32
        from blackholes.io.dtypes import to_float32

        wide = np.asarray(chunk, np.float64) if dtype != "BF16" else to_float32(chunk, dtype).astype(np.float64)
        return (wide * scale).astype(np.float32)
    if chunk.dtype == np.float32:
        return np.asarray(chunk)
    if dtype == "BF16" and buffer is not None:
        bits = buffer[: stop - start].view(np.uint32)
        np.copyto(bits, chunk, casting="safe")
        bits <<= 16
        return buffer[: stop - start]
    from blackholes.io.dtypes import to_float32

    return to_float32(chunk, dtype)


def power_of_two_scale(array: np.ndarray, dtype: str) -> float:
    """A power of two ``s`` such that ``s * max|x|`` lies in [1, 2): 1.0 when the values are already
    of moderate size (2**-20 .. 2**20), so the usual matrix is projected exactly as before.

    Multiplying by a power of two changes only exponents, so nothing is rounded (short of
    subnormals); the PCA of ``s * X`` scaled back is that of ``X`` without float32 overflow
    at 1e18 or underflow of the squares at 1e-30. Read from the raw bits: one integer pass.

    >>> power_of_two_scale(np.array([[3e-30, -1e-30]], np.float32), "F32") == 2.0 ** 99
    True
    """
    from blackholes.io.dtypes import BITS

    if dtype not in BITS:
        return 1.0
    width = BITS[dtype].itemsize * 8
    magnitude = np.uint64((1 << (width - 1)) - 1)  # every bit but the sign
    top = 0
    step = _chunk_rows(array.shape[1])
    mask = BITS[dtype].type(magnitude)
    buf = np.empty((min(step, array.shape[0]), array.shape[1]), BITS[dtype])  # no fresh temporary per chunk
    for start in range(0, array.shape[0], step):
        bits = np.asarray(array[start:start + step]).view(BITS[dtype])
        out = np.bitwise_and(bits, mask, out=buf[: len(bits)])
        top = max(top, int(out.max(initial=0)))
    biggest = float(_bits_to_float(top, dtype))
    if not np.isfinite(biggest) or biggest == 0 or 2.0 ** -20 <= biggest < 2.0 ** 20:
        return 1.0
    return float(2.0 ** -np.floor(np.log2(biggest)))


def _bits_to_float(bits: int, dtype: str) -> float:
    """The value of one raw bit pattern of a float dtype."""
    if dtype == "BF16":
        return float(np.array([bits << 16], np.uint32).view(np.float32)[0])
    from blackholes.io.dtypes import BITS

    return float(np.array([bits], BITS[dtype]).view({"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])[0])


def default_dtype(array: np.ndarray) -> str:
    from blackholes.io.dtypes import SAFETENSORS_DTYPES

    try:
        return SAFETENSORS_DTYPES[np.dtype(array.dtype).newbyteorder("<")]
    except KeyError:
        raise BlackholesError(f"cannot project a matrix of numpy dtype {array.dtype}") from None


def pca_sets(
    array: np.ndarray,
    dtype: str | None = None,
    *,
    rows: list[np.ndarray | None] = (None,),
    k: int = 2,
    n_iter: int = 4,
    oversample: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> tuple[list[Projection], np.ndarray]:
    """Randomised PCA of several row subsets of one matrix, sharing every pass.

    ``array`` is a 2-D array or memory map in storage dtype (``dtype`` its
    safetensors name; bf16 as uint16 bits). ``rows`` lists boolean selections
    ([V], or None for all rows). Returns one :class:`Projection` per selection
    and the L2 norm of every row (float64 [V]). ``n_iter`` passes of subspace
    iteration (the first also gathers means and norms) plus one final pass.

    >>> emb = np.random.default_rng(0).standard_normal((100, 6)).astype(np.float32)
    >>> keep = np.arange(100) >= 10
    >>> (all_rows, kept), norms = pca_sets(emb, "F32", rows=[None, keep])
    >>> all_rows.coords.shape, kept.n_rows, norms.shape
    ((100, 2), 90, (100,))
    """
    V, D = _check_matrix(array, n_iter)
    dtype = dtype or default_dtype(array)
    k = min(k, D)
    # A narrow matrix is solved exactly: with the whole space as the subspace the iteration is exact
    # (the products stay small); wider ones use k + oversample directions.
    width = D if D <= EXACT_DIMS else min(D, k + oversample)
    sel = _selections(rows, V)
    reader = _ChunkReader(array, dtype)
    rng = np.random.default_rng(seed)
    omega = [rng.standard_normal((D, width)) for _ in range(len(sel))]
    bar = _progress_bar(n_iter + 1, progress)
    moments = None  # means, per-set row counts and squared norms, from the first pass
    try:  # the bar is closed on an error too, so the error's line stands alone
        for it in range(n_iter):  # subspace iteration on C^T W C, C = X - 1 mean^T, never formed
            start = omega
            # the first pass meets NaN / inf rows before they are counted and refused: no numpy warnings
            with np.errstate(**({"all": "ignore"} if it == 0 else {})):
                omega, moments = _subspace_pass(reader, sel, start, moments)
                if it == 0 and reader.rescale(moments["sq_norms"]):  # extreme values: first pass again, scaled
                    omega, moments = _subspace_pass(reader, sel, start, None)
            if it == 0:
                _check_finite(moments["sq_norms"])
            bar.update(1)
        z, dots = _final_pass(reader, omega, moments["means"])
        bar.update(1)
    finally:
        bar.close()
    out = [_projection(z, dots, s, sel[s], omega[s], moments, k, width, n_iter + 1, reader)
           for s in range(len(sel))]
    return out, reader.norms(moments)


def _check_matrix(array: np.ndarray, n_iter: int) -> tuple[int, int]:
    if array.ndim != 2:
        raise BlackholesError(f"expected a 2-D matrix, got shape {list(array.shape)}")
    V, D = array.shape
    if n_iter < 1:
        raise BlackholesError(f"n_iter must be at least 1, got {n_iter}")
    if V < 2 or D < 2:  # a map has two axes: a [V, 1] matrix has no second principal direction
        raise BlackholesError(f"need at least 2 rows and 2 columns for a 2-D projection, got shape {[V, D]}")
    return V, D


def _selections(rows, V: int) -> list[np.ndarray]:
    sel = [np.ones(V, bool) if r is None else np.asarray(r, bool) for r in rows]
    for s in sel:
        if s.shape != (V,):
            raise BlackholesError(f"row selection has shape {list(s.shape)}, expected [{V}]")
        if s.sum() < 2:
            raise BlackholesError(f"need at least 2 rows to project, {int(s.sum())} selected")
    return sel


class _ChunkReader:
    """The matrix as float32 row chunks, each pass reading it once from its memory map.

    Rows come out as ``scale * x - shift``: ``scale`` an exact power of two for extreme
    magnitudes, ``shift`` the mean of the first chunk, so that a large common offset
    (1e4 x the spread) does not cancel the covariance away in float32. The PCA is the
    same for shifted rows; :meth:`norms` and the means are given back for the rows as stored.
    """

    def __init__(self, array: np.ndarray, dtype: str):
        self.array, self.dtype = array, dtype
        self.step = _chunk_rows(array.shape[1])
        self.buffer = np.empty((min(self.step, array.shape[0]), array.shape[1]), np.float32) if dtype == "BF16" else None
        self.scale = 1.0  # until the first pass's row norms say the values are extreme (see rescale)
        self._set_shift()

    def _set_shift(self) -> None:
        rows = min(_OFFSET_ROWS, self.array.shape[0])  # a sample: the offset is what all rows share
        self.shift = _offset(_float_chunk(self.array, self.dtype, 0, rows, None, self.scale))
        self.shift64 = None if self.shift is None else self.shift.astype(np.float64)

    def rescale(self, sq_norms: np.ndarray) -> bool:
        """After the first pass: are the values too large or too small for float32 products?
        Then take the exact power-of-two scale from the raw bits and say so (the pass is redone).
        The usual matrix never pays for this: its row norms are of moderate size."""
        finite = sq_norms[np.isfinite(sq_norms)]
        top = float(finite.max()) if finite.size else np.inf
        if finite.size == sq_norms.size and 2.0 ** -60 <= top <= 2.0 ** 60:
            return False  # (all-zero norms may be an underflow: the bits tell)
        scale = power_of_two_scale(self.array, self.dtype)
        if scale == self.scale:
            return False
        self.scale = scale
        self._set_shift()
        return True

    def __iter__(self):
        V = self.array.shape[0]
        for start in range(0, V, self.step):
            stop = min(start + self.step, V)
            x = _float_chunk(self.array, self.dtype, start, stop, self.buffer, self.scale)
            yield start, stop, x if self.shift is None else x - self.shift

    def norms(self, moments: dict) -> np.ndarray:
        """Every row's L2 norm as stored: |y + shift| / scale for the shifted rows y."""
        sq = moments["sq_norms"]
        if self.shift is not None:
            sq = sq + 2 * moments["dot_shift"] + self.shift64 @ self.shift64
        return np.sqrt(np.maximum(sq, 0.0)) / self.scale

    def unshift(self, mean: np.ndarray) -> np.ndarray:
        return mean if self.shift is None else mean + self.shift64


_OFFSET_ROWS = 1024  # rows sampled to decide whether the rows share a large offset


def _offset(first: np.ndarray) -> np.ndarray | None:
    """The shift that centres the rows, when they share an offset large against their spread
    (then float32 products would cancel the covariance away); None for the usual matrix, whose
    rows are then read exactly as stored, without a copy."""
    with np.errstate(all="ignore"):  # NaN rows are refused after the first pass, with their count
        mean = first.mean(axis=0, dtype=np.float64)
        spread = first.var(axis=0, dtype=np.float64).sum()
    if not np.all(np.isfinite(mean)) or not np.isfinite(spread) or mean @ mean <= 16 * spread:
        return None
    return mean.astype(np.float32)


def _subspace_pass(reader: _ChunkReader, sel: list[np.ndarray], omega: list[np.ndarray], moments):
    """One pass: G = C^T W C Omega for every set at once, then Omega = orth(G).

    The first pass (``moments`` None) also gathers each set's mean and every row's squared
    norm, and removes the mean term afterwards (- n mean mean^T Omega)."""
    S, width = len(sel), omega[0].shape[1]
    first = moments is None
    weights = np.stack(sel, axis=1).astype(np.float32)  # [V, S], 1 = row in set
    om32 = np.ascontiguousarray(np.concatenate(omega, axis=1), dtype=np.float32)
    acc = np.zeros((reader.array.shape[1], S * width))
    if first:
        sums, sq_norms = np.zeros((S, reader.array.shape[1])), np.empty(reader.array.shape[0])
        dot_shift = np.zeros(reader.array.shape[0])
    else:
        means = moments["means"]
        shift = [means[s] @ omega[s] for s in range(S)]  # mean^T Omega, [width]
        colsum = np.zeros((S, width))
    for start, stop, x in reader:
        w = weights[start:stop]
        y = x @ om32  # [rows, S*width]
        if first:
            sq_norms[start:stop] = np.einsum("ij,ij->i", x, x, dtype=np.float64)
            if reader.shift is not None:
                dot_shift[start:stop] = x @ reader.shift  # float32 products of centred rows: no cancellation
            sums += (w.T @ x).astype(np.float64)
            for s in range(S):
                y[:, s * width:(s + 1) * width] *= w[:, s:s + 1]
        else:
            for s in range(S):
                block = y[:, s * width:(s + 1) * width]
                block -= shift[s].astype(np.float32)
                block *= w[:, s:s + 1]
                colsum[s] += block.sum(axis=0, dtype=np.float64)
        acc += x.T @ y
    if first:
        moments = _first_moments(sums, sq_norms, sel)
        moments["dot_shift"] = dot_shift
        means = moments["means"]
        g = [acc[:, s * width:(s + 1) * width] - np.outer(sums[s], means[s] @ omega[s]) for s in range(S)]
    else:
        g = [acc[:, s * width:(s + 1) * width] - np.outer(means[s], colsum[s]) for s in range(S)]
    return [np.linalg.qr(gs)[0] for gs in g], moments


def _first_moments(sums: np.ndarray, sq_norms: np.ndarray, sel: list[np.ndarray]) -> dict:
    n = np.array([s.sum() for s in sel], dtype=np.float64)
    return {"means": sums / n[:, None], "n": n, "sq_norms": sq_norms}


def _check_finite(sq_norms: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(sq_norms)))
    if bad:
        rows_hold = f"{bad:,} rows hold" if bad > 1 else "1 row holds"
        raise BlackholesError(f"{rows_hold} NaN or infinite values (or overflow float32); "
                              "a principal-component projection is undefined")


def _final_pass(reader: _ChunkReader, omega: list[np.ndarray], means: np.ndarray):
    """Coordinates of every row in each set's subspace, and x . mean for the variance."""
    S, width = len(omega), omega[0].shape[1]
    basis = np.ascontiguousarray(np.concatenate(omega + [means.T], axis=1), dtype=np.float32)
    V = reader.array.shape[0]
    z = np.empty((V, S * width), dtype=np.float32)
    dots = np.empty((V, S))
    for start, stop, x in reader:
        p = x @ basis
        z[start:stop] = p[:, : S * width]
        dots[start:stop] = p[:, S * width:]
    return z, dots


def _projection(z, dots, s: int, sel: np.ndarray, omega: np.ndarray, moments: dict, k: int, width: int,
                passes: int, reader: _ChunkReader) -> Projection:
    """Set ``s``'s exact PCA inside its subspace (a small eigenproblem), scaled back to the data's units."""
    mean = moments["means"][s]
    zs = z[:, s * width:(s + 1) * width].astype(np.float64) - mean @ omega
    picked = zs[sel]
    evals, evecs = np.linalg.eigh(picked.T @ picked)
    order = np.argsort(evals)[::-1][:k]
    evals, evecs = evals[order], evecs[:, order]
    components = (omega @ evecs).T  # [k, D]
    # Deterministic signs: the largest-magnitude entry of each direction is positive.
    flip = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    flip[flip == 0] = 1
    components *= flip[:, None]
    evecs = evecs * flip[None, :]
    centred_sq = moments["sq_norms"][sel] - 2 * dots[sel, s] + mean @ mean
    denom = max(moments["n"][s] - 1, 1)
    scale = reader.scale  # divided out twice, not squared: 2**-996 squared would overflow
    total = max(centred_sq.sum(), 0.0)
    ratio = np.maximum(evals, 0) / total if total > 0 else np.zeros(k)
    return Projection(
        components=components,
        mean=reader.unshift(mean) / scale,
        explained_variance=np.maximum(evals, 0) / denom / scale / scale,
        total_variance=float(max(centred_sq.sum(), 0.0) / denom / scale / scale),
        coords=(zs @ evecs) / scale,  # float64: values near the float32 maximum stay finite
        ratio=ratio,
        rows=sel,
        passes=passes,
    )


def pca(array: np.ndarray, dtype: str | None = None, *, rows: np.ndarray | None = None, k: int = 2, **kw) -> Projection:
    """Randomised PCA of a 2-D matrix (or of the selected ``rows``), streamed in chunks.

    >>> p = pca(np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32), k=2)
    >>> p.coords.shape, p.explained_variance_ratio.round(3)     # 64 columns: the exact PCA
    ((1000, 2), array([0.024, 0.024]))
    """
    (proj,), _ = pca_sets(array, dtype, rows=[rows], k=k, **kw)
    return proj


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="PCA passes", unit="pass", disable=not enabled, leave=False)
