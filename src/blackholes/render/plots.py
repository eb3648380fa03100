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

from blackholes.io.atomic import atomic_path  # noqa: E402

DPI = 130


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically, close it, and return the path.

    >>> fig, ax = plt.subplots(); _ = ax.plot([0, 1])
    >>> save_figure(fig, "line.png")
    PosixPath('line.png')
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------ density maps (map)


def literal(text: str) -> str:
    """User text (titles, file names, tokens) shown as typed: ``$`` never starts matplotlib mathtext.

    >>> print(literal("costs $5, not $x^2$"))
    costs \\$5, not \\$x^2\\$
    """
    return text.replace("$", r"\$")


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
    share = f"{ratio:.1f}" if ratio >= 1 else f"{ratio:.2g}"
    return f"PC{i + 1} (embedding units; {share}% of variance)"


def _tokens(n: int) -> str:
    return f"{n:,} token" + ("" if n == 1 else "s")


def _norms_panel(ax, dmap, has_mask: bool) -> None:
    """Panel (3) of the density map: the distribution of row norms, black-hole tokens stacked in red."""
    import numpy as np

    V, n_bh = dmap.shape[0], dmap.black_hole_tokens
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


def plot_density_map(dmap, path, *, title: str | None = None, top_groups: int = 5) -> Path:
    """Draw a :class:`~blackholes.analysis.density.DensityMap`: density without and with the mask, and the norms.

    Panels: (1) every token projected on the two leading principal directions,
    with the largest black-hole groups circled; (2) the same after masking the
    black-hole tokens (the PCA refitted on the remaining rows); (3) the
    distribution of row norms with black-hole tokens stacked in red.
    Without a mask, panels (1) and (3) only.

    >>> from blackholes import density_map
    >>> plot_density_map(density_map("model.safetensors", auto_mask=True), "map.png")
    PosixPath('map.png')
    """
    import numpy as np

    has_mask = dmap.masked is not None
    ncols = 3 if has_mask else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5.4), layout="constrained")
    # room between panels: a colorbar's label must not touch the next panel's y-label
    fig.get_layout_engine().set(wspace=0.06)
    V, D = dmap.shape
    n_bh = dmap.black_hole_tokens

    # (1) without the mask
    ax = axes[0]
    _density_panel(
        fig, ax, dmap.hist_full, f"{'Without mask: all' if has_mask else 'All'} {V:,} tokens\n"
        f"densest bin holds {_tokens(dmap.peak_bin_count())}"
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
        xmid = 0.5 * (dmap.hist_full.xedges[0] + dmap.hist_full.xedges[-1])
        for label, (x, y) in _group_labels(shown, xy, dmap.hist_full):
            right = x <= xmid  # keep labels inside the frame: write them towards the centre
            ax.annotate(label, (x, y), xytext=(10 if right else -10, 8),
                        textcoords="offset points", ha="left" if right else "right",
                        color="#b00000", fontsize=8.5, fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
        ax.legend(loc="lower right", fontsize=8.5, framealpha=0.85)
    else:
        _mark_densest(ax, dmap.hist_full)
    _note_outside(ax, dmap.hist_full.outside)

    # (2) with the mask
    if has_mask:
        ax = axes[1]
        kept = V - n_bh
        _density_panel(
            fig, ax, dmap.hist_masked,
            f"With mask: {kept:,} tokens ({n_bh:,} black-hole tokens removed)\n"
            f"densest bin holds {_tokens(dmap.peak_bin_count(masked=True))}",
        )
        ax.set_xlabel(_pc_label(dmap.masked, 0))
        ax.set_ylabel(_pc_label(dmap.masked, 1))
        _note_outside(ax, dmap.hist_masked.outside)

    _norms_panel(axes[-1], dmap, has_mask)

    name = Path(dmap.source).name if os.sep in dmap.source and Path(dmap.source).exists() else dmap.source
    head = title or (f"{name}  [{dmap.key}]" if dmap.key else name)
    fig.suptitle(literal(f"{head} — {V:,} × {D:,} {dmap.dtype}, projected on its two leading principal directions"),
                 fontsize=11.5)
    return save_figure(fig, path)


def _group_labels(shown, xy, hist):
    """One label per cluster of groups that fall in the same histogram bin (else they overprint)."""
    import numpy as np

    bx = np.clip(np.searchsorted(hist.xedges, xy[:, 0]), 0, len(hist.xedges))
    by = np.clip(np.searchsorted(hist.yedges, xy[:, 1]), 0, len(hist.yedges))
    clusters: dict = {}
    for (gid, size, _), key, point in zip(shown, zip(bx, by), xy):
        clusters.setdefault(key, ([], point))[0].append((gid, size))
    out = []
    for members, point in clusters.values():
        if len(members) == 1:
            gid, size = members[0]
            out.append((f"#{gid}: {_tokens(size)}", point))
        else:
            text = " + ".join(f"#{g} ({s:,})" for g, s in members)
            out.append((f"{text} tokens, one bin", point))
    return out


def _mark_densest(ax, hist) -> None:
    """Circle the densest bin: with no mask to name the holes, a one-bin spike is a single pixel."""
    import numpy as np

    i, j = np.unravel_index(int(np.argmax(hist.counts)), hist.counts.shape)
    x = 0.5 * (hist.xedges[i] + hist.xedges[i + 1])
    y = 0.5 * (hist.yedges[j] + hist.yedges[j + 1])
    ax.scatter([x], [y], s=260, facecolors="none", edgecolors="red", linewidths=1.6,
               label=f"densest bin: {_tokens(hist.peak)}")
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.85)


def _note_outside(ax, outside: int) -> None:
    if outside:
        ax.text(0.01, 0.01, f"{_tokens(outside)} beyond the frame (outliers)", transform=ax.transAxes,
                fontsize=8, color="0.3", va="bottom")


# ------------------------------------------------------------------ dynamics (dynamics)

_HOLE, _TRAINED, _NEVER = "#1f3b73", "#d08c2b", "#2a9d5c"


def plot_dynamics(result, out_dir: str | os.PathLike) -> list[Path]:
    """Draw the dynamics figures of a :class:`~blackholes.analysis.dynamics_result.DynamicsResult` as PNGs.

    Writes ``dynamics_spread.png`` (positions, gradients, logits spread against step),
    ``dynamics_speed.png`` (the hole's speed and shared gradient norm) and
    ``dynamics_logits.png`` (untrained vs trained logits); creates ``out_dir``.

    >>> from blackholes import analyze
    >>> plot_dynamics(analyze("run.safetensors", corpus="corpus.txt"), "plots/")   # doctest: +ELLIPSIS
    [PosixPath('plots/dynamics_spread.png'), ...]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spread, speed, logits = dynamics_plot_paths(out)
    return [_plot_spread(result, spread), _plot_speed(result, speed), _plot_logits(result, logits)]


DYNAMICS_PLOTS = ("dynamics_spread.png", "dynamics_speed.png", "dynamics_logits.png")


def dynamics_plot_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The files :func:`plot_dynamics` writes into ``out_dir`` (checked before any work is done).

    >>> [p.name for p in dynamics_plot_paths("plots")]
    ['dynamics_spread.png', 'dynamics_speed.png', 'dynamics_logits.png']
    """
    return [Path(out_dir) / name for name in DYNAMICS_PLOTS]


def _step_axis(ax, steps) -> None:
    if len(steps) and steps[-1] > 20:
        ax.set_xscale("symlog", linthresh=1, linscale=0.4)  # step 0 stays visible
        ax.set_xlim(0, steps[-1] * 1.05)
    ax.grid(True, which="major", alpha=0.3)


def _log_with_zero_band(ax, steps, series: list[tuple]) -> None:
    """Plot non-negative series on a log y axis; exact zeros go on a labelled band below.

    ``series``: (values, label, colour). A log axis cannot show 0, and drawing zeros
    at some tiny epsilon would lie; they get their own shaded baseline, ticked "0".
    """
    import numpy as np

    finite = [v[np.isfinite(v)] for v, _, _ in series]
    nonzero = np.concatenate([f[f > 0] for f in finite]) if finite else np.zeros(0)
    if nonzero.size:
        lo, hi = float(nonzero.min()), float(nonzero.max())
    else:
        lo = hi = 1.0
    top_decade = int(np.ceil(np.log10(hi))) if hi > lo else int(np.floor(np.log10(lo))) + 1
    low_decade = int(np.floor(np.log10(lo)))
    zero_at = 10.0 ** (low_decade - 1)
    for (values, label, colour), f in zip(series, finite):
        shown = np.where(values == 0, zero_at, values)
        zeros = int(np.count_nonzero(f == 0))
        text = f"{label} ({zeros:,} of {f.size:,} steps exactly 0)" if zeros else label
        ax.plot(steps, shown, lw=0.9, color=colour, label=text, drawstyle="steps-mid")
    ax.set_yscale("log")
    ax.set_ylim(zero_at / 3, 10.0 ** (top_decade + 1.2))  # headroom for the legend
    ax.axhspan(zero_at / 3, zero_at * 3, color="0.88", zorder=0)
    ax.text(0.995, zero_at * 1.25, "exactly 0", transform=ax.get_yaxis_transform(), ha="right",
            va="bottom", fontsize=8, color="0.35")
    decades = list(range(low_decade, top_decade + 1))
    stride = max(1, int(np.ceil(len(decades) / 7)))
    ticks = [zero_at] + [10.0**k for k in decades[::stride]]
    ax.set_yticks(ticks)
    ax.set_yticklabels(["0"] + [f"$10^{{{k}}}$" for k in decades[::stride]])
    ax.minorticks_off()
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)


def _plot_spread(result, path: Path) -> Path:
    import numpy as np

    steps = np.asarray(result.recorded_steps)
    s = result.series
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    panels = [
        ("positions", "Positions: max |coordinate - first token's|"),
        ("grads", "Gradients: max |component - first token's|"),
        ("logits", "Logits: max |logit - first token's|"),
    ]
    k = len(result.untrained_tokens)
    for ax, (q, title) in zip(axes, panels):
        hole = ", the hole" if result.rigid_body else ""
        series = [(s[f"{q}_spread"], f"untrained ({k} tokens{hole})", _HOLE)]
        if f"trained_{q}_spread" in s:
            series.append((s[f"trained_{q}_spread"], f"trained ({len(result.trained_tokens)} tokens)", _TRAINED))
        _log_with_zero_band(ax, steps, series)
        fd = result.first_divergence[q]
        status = "bit-identical at every step" if fd is None else f"first differ at step {fd}"
        ax.set_title(f"{title} — untrained: {status}", fontsize=10)
        ax.set_ylabel("spread (same units as values)", fontsize=9)
        _step_axis(ax, steps)
    axes[-1].set_xlabel("training step (symlog scale)")
    fig.suptitle(f"Spread within each group, every recorded step ({len(steps):,} steps, {result.dtype})",
                 fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_speed(result, path: Path) -> Path:
    import numpy as np

    steps = np.asarray(result.recorded_steps)
    s = result.series
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    _log_with_zero_band(axes[0], steps, [(s["speed"], "centroid displacement per training step", _HOLE)])
    fz = result.freeze
    frozen = f"; frozen (no bit changed) at {fz['frozen_count']:,} steps" if fz["frozen_count"] else ""
    axes[0].set_title(f"Speed of the black hole's centroid{frozen}", fontsize=10)
    axes[0].set_ylabel("speed (embedding units / step)", fontsize=9)
    _log_with_zero_band(axes[1], steps, [(s["shared_grad_norm"], "norm of the hole's (shared) gradient", _HOLE)])
    axes[1].set_title("Gradient on the black hole (mean over its tokens = the shared gradient)", fontsize=10)
    axes[1].set_ylabel("L2 norm of gradient row", fontsize=9)
    for ax in axes:
        _step_axis(ax, steps)
    axes[-1].set_xlabel("training step (symlog scale)")
    fig.suptitle(f"How the black hole moves ({len(result.untrained_tokens)} untrained tokens)", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_logits(result, path: Path) -> Path:
    import numpy as np

    steps = np.asarray(result.recorded_steps)
    s = result.series
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if "trained_logit_mean" in s:
        ax.fill_between(steps, s["trained_logit_min"], s["trained_logit_max"], color=_TRAINED, alpha=0.2,
                        lw=0, label=f"trained tokens: min-max ({len(result.trained_tokens)})")
        ax.plot(steps, s["trained_logit_mean"], color=_TRAINED, lw=0.9, label="trained tokens: mean")
    same = result.identical_all_steps["logits"]
    label = "untrained tokens (bit-identical: one value)" if same else "untrained tokens: mean"
    ax.plot(steps, s["untrained_logit"], color=_HOLE, lw=1.2, label=label)
    ax.set_xlabel("training step (symlog scale)" if steps[-1] > 20 else "training step")
    ax.set_ylabel("logit (as recorded)")
    ax.set_title("Logits of untrained vs trained tokens", fontsize=11)
    _step_axis(ax, steps)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
