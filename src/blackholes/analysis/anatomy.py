"""The anatomy of dead vocabulary, beyond the exact holes: one call that scan makes.

In order, each step only when asked or possible:

1. **halos** (``near=K``): clusters of rows within K ULPs (:mod:`blackholes.analysis.near`),
   and the bit anatomy of the holes on the same ULP grid;
2. **who the tokens are** (a tokenizer.json, or the vocabulary a GGUF file carries):
   category and Unicode script (:mod:`blackholes.analysis.vocabulary`) of every token in
   a hole or a halo — of every row when the indicators need the unused/padding ones;
3. **indicators** (``indicators=True``): Magikarp's weight indicators and the candidates
   (:mod:`blackholes.analysis.indicators`), whose tokens are then categorised too.

>>> from blackholes.analysis.exact import find_groups
>>> from blackholes.sources.load import as_matrix
>>> x = np.float32([[1, 2], [1, 2], [1, 2.0000002], [5, 6]])
>>> dead = dead_vocabulary(as_matrix(x), find_groups(x), near=1)
>>> dead.clusters.halo(0), dead.anatomy, dead.categories
([2], None, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from blackholes import defaults

if TYPE_CHECKING:
    from blackholes.analysis.indicators import Indicators
    from blackholes.analysis.near import Anatomy, NearResult
    from blackholes.analysis.vocabulary import Categories


@dataclass
class DeadVocabulary:
    """What :func:`dead_vocabulary` found (each part None when not computed)."""

    clusters: NearResult | None = None
    anatomy: Anatomy | None = None  # two holes or more
    indicators: Indicators | None = None
    categories: Categories | None = None
    notes: list = field(default_factory=list)  # what was asked for but is not defined for this matrix


def dead_vocabulary(m, groups: list[np.ndarray], *, tokenizer=None, near: int | None = None,
                    indicators: bool = False, reference=None, percentile: float = defaults.PERCENTILE,
                    progress: bool = False) -> DeadVocabulary:
    """Halos, token categories and indicators of a :class:`~blackholes.sources.matrix.Matrix`
    whose exact ``groups`` are known. ``tokenizer``: a tokenizer.json path (else ``m.vocabulary``)."""
    out = DeadVocabulary()
    if near is not None:
        out.clusters, out.anatomy, note = _halos(m, groups, near)
        if note:
            out.notes.append(note)
    shown = _shown_ids(groups, out.clusters)
    if indicators:
        out.categories = _categories(m, tokenizer, None)  # every row: the unused and padding ones are the reference
        out.indicators = _indicators(m, groups, out.categories, reference, percentile, progress)
    elif len(shown):
        out.categories = _categories(m, tokenizer, shown)
    return out


def _halos(m, groups, k: int):
    from blackholes.analysis.near import anatomy, check_k, near_clusters

    k = check_k(k)
    if m.quantization:  # skipped, not refused: the model's other matrix (often F32) still gets its halos
        return None, None, (f"--near skipped: ULPs are not defined for {m.quantization} blocks (identity of "
                            "quantised rows is exact; nearness is not)")
    clusters = near_clusters(m.array, m.dtype, k, groups=groups)
    holes = anatomy(m.array, m.dtype, groups, grid=clusters.grid) if len(groups) >= 2 else None
    return clusters, holes, ""


def _shown_ids(groups, clusters) -> np.ndarray:
    """Every token in a hole or a halo: the ones a report names."""
    parts = [np.asarray(g, np.int64) for g in groups]
    if clusters is not None:
        parts += [np.asarray(c.rows, np.int64) for c in clusters.clusters]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _categories(m, tokenizer, ids):
    rows = m.shape[0]
    if tokenizer is not None:
        from blackholes.analysis.vocabulary import categorize

        return categorize(tokenizer, ids, rows=rows)
    if m.vocabulary is not None:
        from blackholes.analysis.vocabulary import categorize_vocabulary

        return categorize_vocabulary(m.vocabulary, ids, rows=rows)
    return None


def _indicators(m, groups, categories, reference, percentile, progress):
    from blackholes.analysis.indicators import indicators

    padding = categories.ids_with("padding") if categories is not None else ()
    unused = categories.ids_with("unused") if categories is not None else ()
    return indicators(m, reference=reference, holes=groups, padding=padding, unused=unused,
                      percentile=percentile, progress=progress)
