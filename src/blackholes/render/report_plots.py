"""The plots of a model's report page: row norms, the indicator, the holes' ULP heat maps, the density map.

matplotlib is imported inside the functions (through :mod:`blackholes.render.plots`),
so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blackholes.analysis.density import scan_density
from blackholes.render.report_answer import facts
from blackholes.render.report_page import widest_coordinates

HEAT_HOLES = 40  # holes in the heat maps
HEAT_COORDINATES = 60  # coordinates in the offset map (the widest spread first)


# ---------------------------------------------------------------------------- plots


CAPTIONS = {
    "norms": "Row norms (L2; log count axis). Every member of a hole has the same norm, so each hole is one "
             "spike (red, labelled with its number); the halo (purple) sits at the holes' norms; candidates "
             "in orange.",
    "indicator": "The under-trained indicator of every token against its id. Candidates (orange) lie at or "
                 "below the dashed threshold; holes in red, halo in purple, padding rows on the grey band.",
    "holes": "Left: distance between every two hole vectors (the largest difference in any coordinate, in "
             "ULPs). Right: each hole's offset from hole #1 in the coordinates where they differ — the "
             "coordinates that separate the holes.",
    "map": "The matrix on its two leading principal directions: token density without the black-hole mask "
           "(each hole is one dense bin) and with it (the PCA refitted on the other rows); right: row norms, "
           "black-hole tokens in red.",
}


def draw_plots(r, given, plots: Path, prefix: str, name: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """Draw what this result allows; ((path, caption) drawn, what was not drawn and why)."""
    drawn, missing = [], []
    dmap, why = scan_density(r, given)
    norms = r.indicators.norm if r.indicators is not None else (dmap.norms if dmap is not None else None)
    if norms is not None:
        drawn.append((plot_norms(r, norms, plots / f"{prefix}norms.png", name), CAPTIONS["norms"]))
    else:
        missing.append(f"the row-norm histogram ({why})")
    if r.indicators is not None:
        drawn.append((plot_indicator(r, plots / f"{prefix}indicator.png", name), CAPTIONS["indicator"]))
    else:
        missing.append("the indicator plot (scan with `--indicators`)")
    if r.anatomy is not None:
        drawn.append((plot_holes(r, plots / f"{prefix}holes.png", name), CAPTIONS["holes"]))
    elif len(r.groups) < 2:
        missing.append("the holes' ULP heat map (there are fewer than two holes to compare)")
    else:
        missing.append("the holes' ULP heat map (scan with `--near`)")
    if dmap is not None:
        from blackholes.render.plots import plot_density_map

        halo = len(facts(r).halo_rows)
        caption = CAPTIONS["map"] + (f" The {halo:,} halo rows are not masked: lying next to the holes, they can "
                                     "remain a dense spot." if halo else "") if dmap.masked is not None else (
            "The matrix on its two leading principal directions (no black holes, so nothing to mask; the "
            "densest bin is circled); right: row norms.")
        drawn.append((plot_density_map(dmap, plots / f"{prefix}map.png", title=name), caption))
    else:
        missing.append(f"the density map ({why})")
    return drawn, missing


_COLOURS = {"other": "#4c72b0", "candidates": "#f28e2b", "halo": "#9467bd", "holes": "#d62728"}


def _row_sets(r) -> list[tuple[str, np.ndarray]]:
    """(name, bool [V]) of the holes, the halo, the candidates outside both, and the other rows."""
    V = r.shape[0]
    hole = np.asarray(r.mask, bool)
    halo = np.zeros(V, bool)
    halo[facts(r).halo_rows] = True
    cand = np.zeros(V, bool)
    cand[r.candidates] = True
    cand &= ~halo & ~hole
    return [("other", ~(hole | halo | cand)), ("candidates", cand), ("halo", halo), ("holes", hole)]


_SET_WORDS = {"other": "other tokens", "candidates": "candidates", "halo": "halo (near a hole)",
              "holes": "black-hole tokens"}


def plot_norms(r, norms: np.ndarray, path: Path, name: str) -> Path:
    """The row-norm histogram, stacked: other tokens, candidates, halo, holes; the largest holes labelled."""
    from blackholes.render.plots import literal, save_figure
    import matplotlib.pyplot as plt

    norms = np.asarray(norms, dtype=np.float64)
    finite = np.isfinite(norms)  # a row holding NaN or inf has no norm to place
    sets = [(k, s & finite) for k, s in _row_sets(r) if (s & finite).any()]
    edges, log_x = _norm_edges(norms[finite] if finite.any() else np.zeros(1))
    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    counts, _, _ = ax.hist([norms[s] for _, s in sets], bins=edges, stacked=True,
                           color=[_COLOURS[k] for k, _ in sets],
                           label=[f"{_SET_WORDS[k]} ({int(s.sum()):,})" for k, s in sets])
    total = np.asarray(counts[-1] if len(sets) > 1 else counts, dtype=np.float64).ravel()
    total = total if total.size else np.zeros(len(edges) - 1)
    ax.set_yscale("log")
    ax.set_ylim(0.7, max(2.0, total.max()) * 12)  # headroom for the hole labels and the legend
    if log_x:
        ax.set_xscale("log")
    _label_holes(ax, r, norms, edges, total)
    zero, odd = int((norms == 0).sum()), int((~finite).sum())
    ax.set_xlabel("L2 norm of the row (embedding units)" + (", log scale" if log_x else "")
                  + (f"; {zero:,} rows have norm exactly 0" if zero else "")
                  + (f"; {odd:,} rows with a NaN or infinite norm not shown" if odd else ""))
    ax.set_ylabel("tokens per bin (log scale)")
    ax.legend(loc="upper right", fontsize=8.5, framealpha=0.9)
    ax.set_title(literal(f"{name}\nrow norms of {r.shape[0]:,} tokens"), fontsize=10.5)
    return save_figure(fig, path)


def _norm_edges(norms: np.ndarray) -> tuple[np.ndarray, bool]:
    """120 bins over the norms; logarithmic when the positive norms span more than 50x and none is 0."""
    lo, hi = float(norms.min()), float(norms.max())
    if lo > 0 and hi / lo > 50:
        return np.geomspace(lo, hi * 1.0001, 121), True
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    return np.linspace(lo, hi, 121), False


def _label_holes(ax, r, norms, edges, total, top: int = 8) -> None:
    """One label per bin holding one of the ``top`` largest holes, naming every hole in that bin:
    "#1 (814)" or "holes #1–#13: 2,100 tokens"."""
    if not r.groups:
        return
    by_bin: dict[int, list] = {}
    for g in r.groups:
        b = int(np.clip(np.searchsorted(edges, norms[g.token_ids[0]], side="right") - 1, 0, len(edges) - 2))
        by_bin.setdefault(b, []).append(g)
    labelled = sorted(b for b, groups in by_bin.items() if any(g.id <= top for g in groups))
    for n, b in enumerate(labelled):
        groups = by_bin[b]
        x = 0.5 * (edges[b] + edges[b + 1])
        if len(groups) == 1:
            text = f"#{groups[0].id} ({groups[0].size:,})"
        else:
            text = f"holes {_hole_list([g.id for g in groups])}: {sum(g.size for g in groups):,} tokens"
        ax.annotate(text, (x, max(total[b], 1.0)), xytext=(0, 8 + 13 * (n % 3)), textcoords="offset points",
                    ha="center", fontsize=8, color="#8b0000", fontweight="bold",
                    arrowprops=dict(arrowstyle="-", color="#8b0000", lw=0.6),
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))


def _hole_list(ids: list[int]) -> str:
    """Hole numbers as "#1–#6" when consecutive, else "#1, #4, #5"."""
    ids = sorted(ids)
    if len(ids) > 2 and ids[-1] - ids[0] + 1 == len(ids):
        return f"#{ids[0]}–#{ids[-1]}"
    return ", ".join(f"#{i}" for i in ids[:6]) + (f", … ({len(ids)} holes)" if len(ids) > 6 else "")


def plot_indicator(r, path: Path, name: str) -> Path:
    """The main indicator against token id: every row, the sets in colour, the candidates' threshold."""
    from blackholes.render.plots import literal, save_figure
    import matplotlib.pyplot as plt

    ind = r.indicators
    values = np.asarray(ind.values(), dtype=np.float64)
    V = len(values)
    ids = np.arange(V)
    finite = np.isfinite(values)
    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    if r.vocab_size and V > r.vocab_size:
        ax.axvspan(r.vocab_size - 0.5, V - 0.5, color="0.9", lw=0, label=f"padding rows ({V - r.vocab_size:,})")
    sizes = {"other": 2, "candidates": 10, "halo": 12, "holes": 8}
    order = {"other": 0, "holes": 1, "halo": 2, "candidates": 3}  # the few drawn last: the holes' band hides nothing
    for k, s in sorted(_row_sets(r), key=lambda ks: order[ks[0]]):
        pick = s & finite
        if pick.any():
            ax.scatter(ids[pick], values[pick], s=sizes[k], c=_COLOURS[k], lw=0, rasterized=True,
                       label=f"{_SET_WORDS[k]} ({int(pick.sum()):,})")
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    if (~finite).any():  # no direction off the first principal component: drawn below the rest, not at a fake value
        y = lo - 0.06 * ((hi - lo) or 1.0)
        ax.scatter(ids[~finite], np.full(int((~finite).sum()), y), s=14, marker="x", c="k", lw=0.8,
                   label=f"undefined: no direction off PC1 ({int((~finite).sum()):,}; counted as most dead)")
    if ind.threshold is not None:
        ax.axhline(ind.threshold, ls="--", c="k", lw=0.9,
                   label=f"threshold: the lowest {ind.percentile:g}% ({ind.threshold:.3g})")
    if ind.main == "norm" and lo > 0 and hi / lo > 50 and finite.all():
        ax.set_yscale("log")
    ax.set_xlim(-0.5, V - 0.5)
    ax.set_xlabel("token id")
    ax.set_ylabel("cosine distance to the dead mean\n(1st PC removed; low = dead)" if ind.main != "norm"
                  else "row L2 norm (low = dead)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, framealpha=0.9)
    ax.set_title(literal(f"{name}\nthe under-trained indicator ({ind.main}) of every token"), fontsize=10.5)
    return save_figure(fig, path)


def plot_holes(r, path: Path, name: str) -> Path:
    """Two heat maps: the holes' pairwise L-infinity ULP distances, and their offsets per separating coordinate."""
    from blackholes.render.plots import literal, save_figure
    import matplotlib.pyplot as plt

    a = r.anatomy
    H = min(len(a.rows), HEAT_HOLES)
    cols = widest_coordinates(a, HEAT_COORDINATES)
    C = len(cols)
    cell = min(0.42, 13.0 / (H + C))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(max(8.0, cell * (H + C) + 4.5), max(4.2, cell * H + 2.4)), layout="constrained",
        gridspec_kw={"width_ratios": [max(H, 3), max(C, 3)]})
    labels = [f"#{h + 1} ({r.groups[h].size:,})" for h in range(H)]
    _heat(fig, left, a.ulps[:H, :H], labels, [f"#{h + 1}" for h in range(H)], signed=False,
          bar="ULPs", title="Distance between hole vectors\n(largest coordinate difference, ULPs)")
    _heat(fig, right, a.offsets[:H][:, cols], labels, [str(a.coordinates[j]) for j in cols], signed=True,
          bar="ULPs from hole #1", title="Offset from hole #1 in each separating coordinate\n(ULPs; blank = the same bits)")
    right.set_xlabel("coordinate" + (f" (the {C} widest spreads of {len(a.coordinates):,})"
                                     if C < len(a.coordinates) else ""))
    fig.suptitle(literal(f"{name}\nhow the {len(a.rows)} hole vectors differ — in {len(a.coordinates):,} of "
                         f"{r.shape[1]:,} coordinates ({a.grid} grid)"
                         + (f"; the {H} largest holes shown" if H < len(a.rows) else "")), fontsize=11)
    return save_figure(fig, path)


def _heat(fig, ax, values, ylabels, xlabels, *, signed: bool, bar: str, title: str) -> None:
    """One integer heat map: one colour per ULP count when they are few, else a symmetric-log scale
    (0 stays visible); NaN cells grey; the numbers written in the cells when there are few."""
    from blackholes.io.dtypes import ULP_NAN

    v = np.asarray(values, dtype=np.int64)
    nan = v >= ULP_NAN
    data = np.ma.masked_array(np.where(nan, 0, v).astype(np.float64), mask=nan)
    top = max(1, int(np.abs(data).max()) if data.count() else 1)
    norm, ticks, scale = _ulp_norm(top, signed)
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r" if signed else "magma_r"].with_extremes(bad="0.75")
    image = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.02, ticks=ticks)
    cbar.set_label(bar + scale, fontsize=8.5)
    cbar.ax.set_yticklabels([f"{int(k):+,}" if signed and k else f"{int(k):,}" for k in ticks], fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=8, rotation=90)
    ax.set_title(title, fontsize=10)
    widest = max((len(f"{int(u):+,}") for u in np.asarray(v).ravel() if np.isfinite(u)), default=0)
    if v.size <= 400 and widest * 4.5 <= 72 * 6.5 / max(1, v.shape[1]):  # numbers only where they fit their cell
        for (i, j), u in np.ndenumerate(v):
            if signed and u == 0:  # the same bits as hole #1: the blank cells are the point
                continue
            red, green, blue, _ = cmap.get_bad() if nan[i, j] else cmap(norm(u))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(j, i, "NaN" if nan[i, j] else f"{u:+,}" if signed else f"{u:,}", ha="center", va="center",
                    fontsize=7, color="white" if dark else "black")


def _ulp_norm(top: int, signed: bool):
    """(colour norm, colour-bar ticks, scale words): one colour per count up to 12 ULPs, a linear scale
    up to 100, a symmetric-log one beyond (0 stays visible on every one)."""
    from matplotlib.colors import BoundaryNorm, Normalize, SymLogNorm
    from matplotlib.ticker import MaxNLocator

    low = -top if signed else 0
    if top <= 12:
        step = 1 if top <= 6 else 2
        return BoundaryNorm(np.arange(low - 0.5, top + 1.0), 256), [k for k in range(low, top + 1) if k % step == 0], ""
    if top <= 100:
        return Normalize(vmin=low, vmax=top), [int(k) for k in MaxNLocator(8, integer=True).tick_values(low, top)
                                                if low <= k <= top], ""
    decades = [10 ** e for e in range(int(np.log10(top)) + 1)]
    ticks = ([-d for d in reversed(decades)] if signed else []) + [0] + decades
    return SymLogNorm(linthresh=1.0, vmin=low, vmax=top, base=10), ticks, " (symmetric log scale)"
