"""The coarsening sweep's page (``blackholes sweep --no-train``): ``coarsening.md``, ``coarsening.html``
and ``plots/coarsening_*.png``, from the sweep's ``coarsening.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from blackholes.render.page import Document
from blackholes.render.sweep_parts import COLOURS, band, fmt_sigma, holes_text, range_text, sigma_axis, write_pages

COARSENING_PLOTS = {
    "census": ("coarsening_holes.png", "Rounding alone: holes (left), tokens in holes and the largest hole (right) "
                                       "against σ; the mean over seeds, shaded min–max; dashed: the target model."),
    "spread": ("coarsening_spread.png", "How far the rounded rows reach: the widest L∞ distance of any row from the "
                                        "rounded centre, in ULPs of the dtype (0 at σ = 0). It jumps when some "
                                        "coordinate crosses 0, where the grid is finest (every tiny magnitude is a "
                                        "step)."),
    "fit": ("coarsening_fit.png", "Left: distance between the simulated and the real hole sizes against σ (L1 of "
                                  "the sizes sorted largest first, in tokens), the best σ marked. Right: the hole "
                                  "sizes by rank at the best σ, every seed, and the real model's."),
}


# ---------------------------------------------------------------------------- the coarsening sweep


def write_coarsening_report(out_dir: str | os.PathLike, data: dict) -> list[Path]:
    """``coarsening.md``, ``coarsening.html`` and their PNGs from a coarsening result's JSON."""
    out = Path(out_dir)
    plots = draw_coarsening_plots(out / "plots", data)
    doc = coarsening_document(out, data, plots)
    return write_pages(doc, out, "coarsening") + list(plots.values())


def coarsening_answer(data: dict) -> list[str]:
    """The page's answer, a few sentences (also what the command prints)."""
    rows = data["by_sigma"]
    seeds = len(data["seeds"])
    lines = [f"{data['tokens']:,} rows of {data['dim']:,} dims, rounded to {data['dtype']} around "
             f"{data['centre']['description']}; {len(rows):,} values of σ × {seeds:,} seed(s)."]
    some = [r for r in rows if r.get("holes") and r["holes"]["max"] > 0]
    if not some:
        lines.append("Rounding makes no hole at any σ of the grid.")
    else:
        first, last = some[0], some[-1]
        lines.append(f"Holes form up to σ = **{fmt_sigma(last['sigma'])}** (in at least one seed); at σ = "
                     f"{fmt_sigma(first['sigma'])}: {range_text(first['tokens_in_holes'])} tokens in "
                     f"{holes_text(first['holes'])}.")
        after = [r for r in rows if r["sigma"] > last["sigma"]]
        if after:
            lines.append(f"From σ = {fmt_sigma(after[0]['sigma'])} on, every row is unique.")
    best, target = data.get("best"), data.get("target")
    if best and target:
        name = target.get("source") or target.get("path")
        name = f"`{name}`" if name else "the target"
        sizes = best["sizes_by_seed"][0] if best["sizes_by_seed"] else []
        lines.append(f"Closest to {name} ({target['holes']} holes, {target['tokens']:,} tokens: "
                     f"{_sizes(target['sizes'])}): σ = **{fmt_sigma(best['sigma'])}**, distance "
                     f"{range_text(best['distance'], '{:,.1f}')} tokens ({best['relative']:.0%} of the real hole tokens); "
                     f"seed {data['seeds'][0]} gives {_sizes(sizes)}.")
    return lines


def _sizes(sizes: list[int], k: int = 13) -> str:
    if not sizes:
        return "no hole"
    shown = ", ".join(f"{s:,}" for s in sizes[:k])
    return shown + (f", … ({len(sizes):,} holes)" if len(sizes) > k else "")


def coarsening_summary(data: dict) -> str:
    """The answer as terminal lines (Markdown marks removed)."""
    return "\n".join("  " + line.replace("**", "").replace("`", "") for line in coarsening_answer(data))


def coarsening_document(out_dir: Path, data: dict, plots: dict[str, Path]) -> Document:
    """The coarsening sweep's page."""
    doc = Document("Coarsening: black holes from rounding alone, no training", out_dir)
    doc.para("Does rounding alone make black holes? Every row starts at one centre plus noise, "
             "`row = round(c + σ·ε)`, ε ~ N(0, 1), and is rounded once to the dtype; nothing is trained. "
             "A hole is a group of rows that are bit-for-bit identical.")
    doc.bullets(coarsening_answer(data))
    doc.heading("Per σ")
    shown = table_rows(data["by_sigma"])
    if len(shown) < len(data["by_sigma"]):
        doc.para(f"{len(shown):,} of the {len(data['by_sigma']):,} values of σ: the first, the last and those where "
                 "a count changes (thinned evenly when there are more); every one is in `coarsening.json`.")
    target = data.get("target") is not None
    header = ["σ", "holes", "tokens in holes", "largest", "max L∞ (ULPs)"]
    header += ["distance to target"] if target else []
    doc.table(header, [[fmt_sigma(r["sigma"]), range_text(r.get("holes"), "{:,.1f}"),
                        range_text(r.get("tokens_in_holes"), "{:,.1f}"), range_text(r.get("largest"), "{:,.1f}"),
                        range_text(r.get("max_ulps"), "{:,.1f}")]
                       + ([range_text(r.get("distance"), "{:,.1f}")] if target else [])
                       for r in shown])
    if plots:
        doc.heading("Plots")
        for name, (_, caption) in COARSENING_PLOTS.items():
            if name in plots:
                doc.image(plots[name], caption)
    doc.heading("How it is computed")
    doc.bullets([f"Definition: {data['definition']}.",
                 "Distance: " + (data.get("distance") or "(no target)") + "; the best σ has the smallest mean over "
                 "the seeds.",
                 "Cells read `mean [min–max]` over the seeds; one number when every seed agrees.",
                 f"Every (σ, seed): `coarsening.json` ({len(data['points']):,} points, {data['seconds']:.1f} s)."])
    return doc


def table_rows(rows: list[dict], limit: int = 60) -> list[dict]:
    """At most ``limit`` rows of a long σ table: every σ where the counts change, thinned evenly.

    >>> [r["sigma"] for r in table_rows([{"sigma": s, "holes": {"mean": h}} for s, h in enumerate([1, 1, 1, 0, 0])], 3)]
    [0, 3, 4]
    """
    if len(rows) <= limit:
        return rows
    keys = [json.dumps({k: v for k, v in r.items() if k not in ("sigma", "max_ulps")}, sort_keys=True) for r in rows]
    changes = [i for i in range(len(rows)) if i == 0 or i == len(rows) - 1 or keys[i] != keys[i - 1]]
    if len(changes) > limit:
        changes = [changes[i] for i in np.unique(np.round(np.linspace(0, len(changes) - 1, limit)).astype(int))]
    return [rows[i] for i in changes]


def draw_coarsening_plots(folder: Path, data: dict) -> dict[str, Path]:
    """The coarsening figures as PNGs in ``folder``."""
    from blackholes.render.plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    out = {"census": save_figure(_coarse_census_figure(data), folder / COARSENING_PLOTS["census"][0]),
           "spread": save_figure(_coarse_spread_figure(data), folder / COARSENING_PLOTS["spread"][0])}
    if data.get("target") is not None and data.get("best") is not None:
        out["fit"] = save_figure(_coarse_fit_figure(data), folder / COARSENING_PLOTS["fit"][0])
    return out


def _coarse_census_figure(data: dict):
    import matplotlib.pyplot as plt

    rows, target = data["by_sigma"], data.get("target")
    sigmas = [r["sigma"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for ax, keys in ((axes[0], ("holes",)), (axes[1], ("tokens_in_holes", "largest"))):
        x = sigma_axis(ax, sigmas)
        for i, key in enumerate(keys):
            colour = COLOURS[i]
            label = key.replace("_", " ") if key != "largest" else "largest hole"
            band(ax, x(sigmas), [r.get(key) for r in rows], colour, label, bars=False, sigmas=sigmas)
            if target is not None:
                real = {"holes": target["holes"], "tokens_in_holes": target["tokens"],
                        "largest": max(target["sizes"], default=0)}[key]
                ax.axhline(real, color=colour, ls="--", lw=1, label=f"target: {real:,}")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Holes")
    axes[0].set_ylabel("holes")
    axes[1].set_title("Tokens in holes, and the largest hole")
    axes[1].set_ylabel("tokens")
    fig.suptitle(f"{data['tokens']:,} rows × {data['dim']:,} dims rounded to {data['dtype']}", fontsize=10)
    fig.tight_layout()
    return fig


def _coarse_spread_figure(data: dict):
    import matplotlib.pyplot as plt

    rows = data["by_sigma"]
    sigmas = [r["sigma"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = sigma_axis(ax, sigmas)
    band(ax, x(sigmas), [r.get("max_ulps") for r in rows], COLOURS[0], "widest row (L∞ from the centre)", bars=False,
          sigmas=sigmas)
    ax.set_yscale("symlog", linthresh=1, linscale=0.5)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"ULPs of {data['dtype']}")
    ax.set_title("How far the rounded rows reach from the rounded centre")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _coarse_fit_figure(data: dict):
    import matplotlib.pyplot as plt

    rows, best, target = data["by_sigma"], data["best"], data["target"]
    sigmas = [r["sigma"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3))
    x = sigma_axis(left, sigmas)
    band(left, x(sigmas), [r.get("distance") for r in rows], COLOURS[0], "distance (mean over seeds)", bars=False,
          sigmas=sigmas)
    left.axvline(float(x([best["sigma"]])[0]), color=COLOURS[1], ls="--", lw=1,
                 label=f"best σ = {fmt_sigma(best['sigma'])}")
    left.set_ylim(bottom=0)
    left.set_ylabel("tokens")
    left.set_title("Distance to the real hole sizes")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    _rank_panel(right, target["sizes"], best["sizes_by_seed"], data["seeds"])
    right.set_title(f"Hole sizes at σ = {fmt_sigma(best['sigma'])}")
    fig.tight_layout()
    return fig


def _rank_panel(ax, real: list[int], simulated: list[list[int]], seeds: list[int]) -> None:
    """Hole sizes by rank (largest = 1), log scale: the real model's and each seed's."""
    if real:
        ax.plot(range(1, len(real) + 1), real, "s-", color="black", ms=5, lw=1.2, label="real model")
    for i, (sizes, seed) in enumerate(zip(simulated, seeds)):
        if sizes:
            ax.plot(range(1, len(sizes) + 1), sizes, "o-", color=COLOURS[(i + 1) % len(COLOURS)], ms=3, lw=0.9,
                    alpha=0.8, label=f"seed {seed} ({len(sizes):,} holes)")
    if ax.has_data():
        from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

        ax.set_yscale("log")
        whole = FuncFormatter(lambda v, _: f"{v:,.0f}")
        ax.yaxis.set_major_formatter(whole)
        top = max([*real, *[s for sizes in simulated for s in sizes]])
        ax.yaxis.set_minor_formatter(whole if top < 20 else NullFormatter())  # label 2..9 only on a short axis
        if max(len(real), *[len(s) for s in simulated]) > 30:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(whole)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no hole in either", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("rank (1 = the largest hole)")
    ax.set_ylabel("tokens in the hole")
    ax.grid(True, alpha=0.3, which="both")
