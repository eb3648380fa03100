"""Plots: matplotlib figures for dynamics and embedding-space maps.

Imported only by commands that draw (never on the scan path). Every figure is
saved atomically as PNG through :func:`save_figure`.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from .fileio import atomic_path  # noqa: E402

DPI = 130


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically, close it, and return the path.

    >>> fig, ax = plt.subplots(); ax.plot([0, 1]); save_figure(fig, "line.png")
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------ density maps (map)


def _density_panel(fig, ax, hist, title: str, cmap: str = "viridis"):
    """One 2-D histogram on a log colour scale; empty bins stay white (log(0) is undefined)."""
    import numpy as np
    from matplotlib.colors import LogNorm

    counts = np.ma.masked_equal(hist.counts.T, 0)  # histogram2d is [x, y]; imshow wants [row=y, col=x]
    colours = plt.get_cmap(cmap).with_extremes(bad="white")
    vmax = max(hist.peak, 2)
    image = ax.imshow(
        counts,
        origin="lower",
        extent=(hist.xedges[0], hist.xedges[-1], hist.yedges[0], hist.yedges[-1]),
        aspect="auto",
        cmap=colours,
        norm=LogNorm(vmin=1, vmax=vmax),
        interpolation="nearest",
    )
    bar = fig.colorbar(image, ax=ax, pad=0.02)
    bar.set_label("tokens per bin (log scale; white = 0)")
    ax.set_title(title)
    return image


def _pc_label(proj, i: int) -> str:
    ratio = proj.explained_variance_ratio[i] * 100 if i < len(proj.explained_variance) else 0.0
    return f"PC{i + 1} (embedding units; {ratio:.1f}% of variance)"


def plot_density_map(dmap, path, *, title: str | None = None, top_groups: int = 5) -> Path:
    """Draw a :class:`~blackholes.density.DensityMap`: density without and with the mask, and the norms.

    Panels: (1) every token projected on the two leading principal directions,
    with the largest black-hole groups circled; (2) the same after masking the
    black-hole tokens (the PCA refitted on the remaining rows); (3) the
    distribution of row norms with black-hole tokens stacked in red.
    Without a mask, panels (1) and (3) only.

    >>> plot_density_map(density_map("model.safetensors", auto_mask=True), "map.png")
    """
    import numpy as np

    has_mask = dmap.masked is not None
    ncols = 3 if has_mask else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5.4), layout="constrained")
    V, D = dmap.shape
    n_bh = dmap.black_hole_tokens

    # (1) without the mask
    ax = axes[0]
    _density_panel(
        fig, ax, dmap.hist_full, f"Without mask: all {V:,} tokens\ndensiest bin holds {dmap.peak_bin_count():,} tokens"
    )
    ax.set_xlabel(_pc_label(dmap.full, 0))
    ax.set_ylabel(_pc_label(dmap.full, 1))
    groups = dmap.group_sizes()
    if groups:
        shown = groups[:top_groups]
        xy = np.array([dmap.full.coords[t] for _, _, t in shown])
        ax.scatter(
            xy[:, 0], xy[:, 1], s=260, facecolors="none", edgecolors="red", linewidths=1.6,
            label=f"black holes (largest {len(shown)} of {len(groups)} groups)",
        )
        for (gid, size, _), (x, y) in zip(shown, xy):
            ax.annotate(f"#{gid}: {size:,} tokens", (x, y), xytext=(10, 8), textcoords="offset points",
                        color="#b00000", fontsize=8.5, fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
        ax.legend(loc="lower right", fontsize=8.5, framealpha=0.85)
    _note_outside(ax, dmap.hist_full.outside)

    # (2) with the mask
    if has_mask:
        ax = axes[1]
        kept = V - n_bh
        _density_panel(
            fig, ax, dmap.hist_masked,
            f"With mask: {kept:,} tokens ({n_bh:,} black-hole tokens removed)\n"
            f"densiest bin holds {dmap.peak_bin_count(masked=True):,} tokens",
        )
        ax.set_xlabel(_pc_label(dmap.masked, 0))
        ax.set_ylabel(_pc_label(dmap.masked, 1))
        _note_outside(ax, dmap.hist_masked.outside)

    # (3) norms
    ax = axes[-1]
    norms = dmap.norms
    lo, hi = float(norms.min()), float(norms.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 101)
    if has_mask and n_bh:
        ax.hist([norms[~dmap.mask], norms[dmap.mask]], bins=edges, stacked=True,
                color=["#4c72b0", "#d62728"],
                label=[f"other tokens ({V - n_bh:,})", f"black-hole tokens ({n_bh:,})"])
        ax.legend(loc="upper right", fontsize=8.5)
    else:
        ax.hist(norms, bins=edges, color="#4c72b0", label=f"all tokens ({V:,})")
        ax.legend(loc="upper right", fontsize=8.5)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)  # a bin holding 1 token stays visible; empty bins draw nothing
    ax.set_xlabel("L2 norm of the embedding row (embedding units)")
    ax.set_ylabel("tokens per bin (log scale)")
    ax.set_title("Row norms" + (" — black-hole tokens in red" if has_mask and n_bh else ""))

    head = title or f"{dmap.source}  [{dmap.key}]" if dmap.key else (title or dmap.source)
    fig.suptitle(f"{head} — {V:,} × {D:,} {dmap.dtype}, projected on its two leading principal directions",
                 fontsize=11.5)
    return save_figure(fig, path)


def _note_outside(ax, outside: int) -> None:
    if outside:
        ax.text(0.01, 0.01, f"{outside:,} outlying tokens beyond the frame", transform=ax.transAxes,
                fontsize=8, color="0.3", va="bottom")
