"""Pieces both sweep pages share: σ axes and bands for the plots, σ and ranges in words, writing a page.

σ axes are logarithmic; σ = 0 gets its own place one decade left of the smallest σ, ticked "0".

>>> fmt_sigma(1e-05), range_text({"mean": 2.5, "min": 1, "max": 4}, "{:,.1f}")
('1e-05', '2.5 [1–4]')
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from blackholes.io.atomic import write_text
from blackholes.render.page import Document

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def write_pages(doc: Document, out: Path, stem: str) -> list[Path]:
    md, page = out / f"{stem}.md", out / f"{stem}.html"
    write_text(md, doc.markdown())
    write_text(page, doc.html())
    return [page, md]


def fmt_sigma(sigma: float) -> str:
    """σ as people write it.

    >>> fmt_sigma(0.0), fmt_sigma(1e-05), fmt_sigma(0.25), fmt_sigma(3.1622776601683795e-06)
    ('0', '1e-05', '0.25', '3.16e-06')
    """
    return "0" if sigma == 0 else f"{sigma:.3g}"


def range_text(s: dict | None, fmt: str = "{:,.0f}") -> str:
    """``mean [min–max]`` (or just the value when all seeds agree); whole numbers stay whole.

    >>> range_text({"mean": 2.5, "min": 1, "max": 4}, "{:,.1f}"), range_text({"mean": 3.0, "min": 3, "max": 3})
    ('2.5 [1–4]', '3')
    """
    if s is None:
        return "–"
    ends = [f"{v:,}" if isinstance(v, int) else fmt.format(v) for v in (s["min"], s["max"])]
    if s["min"] == s["max"]:
        return ends[0]
    return f"{fmt.format(s['mean'])} [{ends[0]}–{ends[1]}]"


def holes_text(s: dict | None) -> str:
    """``1 hole``, ``3 holes``, ``1.5 [1–2] holes``.

    >>> holes_text({"mean": 1.0, "min": 1, "max": 1}), holes_text({"mean": 1.5, "min": 1, "max": 2})
    ('1 hole', '1.5 [1–2] holes')
    """
    one = s is not None and s["min"] == s["max"] == 1
    return f"{range_text(s, '{:,.1f}')} hole" + ("" if one else "s")


# ---------------------------------------------------------------------------- σ axes


def sigma_axis(ax, sigmas) -> "callable":
    """Make ``ax``'s x axis a σ axis; returns ``x(σ)``, the position to draw σ at.

    Logarithmic when some σ > 0: σ = 0 goes one decade left of the smallest positive σ
    (a log axis has no 0), ticked "0", behind a dotted line. Linear when every σ is 0.
    """
    positive = sorted(s for s in sigmas if s > 0)
    ax.set_xlabel("σ (initial spread around the shared point)")
    if not positive:
        ax.set_xticks([0.0], ["0"])
        ax.set_xlim(-1, 1)
        return lambda s: np.asarray(s, float)
    ax.set_xscale("log")
    zero_at = positive[0] / 10
    if 0 in sigmas or 0.0 in sigmas:
        ax.axvline(math.sqrt(zero_at * positive[0]), color="0.7", lw=0.8, ls=":")
        ticks = [zero_at] + [t for t in _decades(positive[0], positive[-1])]
        ax.set_xticks(ticks, ["0"] + [f"$10^{{{int(round(math.log10(t)))}}}$" for t in ticks[1:]])
        ax.minorticks_off()
    return lambda s: np.where(np.asarray(s, float) > 0, np.asarray(s, float), zero_at)


def _decades(lo: float, hi: float) -> list[float]:
    """Powers of ten covering [lo, hi], thinned to at most 8."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    stride = max(1, math.ceil((last - first + 1) / 8))
    return [10.0 ** k for k in range(first, last + 1, stride)]


def band(ax, x, s_rows: list[dict | None], colour: str, label: str, *, bars: bool, sigmas=None):
    """Mean with min–max error bars (``bars``) or a shaded band, skipping missing points.

    With ``sigmas`` given, the σ = 0 point stands apart (a marker and its bar): a line from
    it to the smallest positive σ would cross the axis' break and mean nothing.
    """
    keep = [i for i, s in enumerate(s_rows) if s is not None]
    if not keep:
        return
    zero = [i for i in keep if sigmas is not None and sigmas[i] == 0]
    rest = [i for i in keep if i not in zero]
    x = np.asarray(x, float)

    def stats(idx):
        mean = np.array([s_rows[i]["mean"] for i in idx], float)
        lo = np.array([s_rows[i]["min"] for i in idx], float)
        hi = np.array([s_rows[i]["max"] for i in idx], float)
        return x[idx], mean, mean - lo, hi - mean

    if rest:
        px, mean, down, up = stats(rest)
        marker = "o" if len(px) <= 40 else None
        if bars:
            ax.errorbar(px, mean, yerr=[down, up], color=colour, label=label, capsize=3, lw=1.3, marker=marker, ms=4)
        else:
            ax.plot(px, mean, color=colour, label=label, lw=1.3, marker=marker, ms=4)
            ax.fill_between(px, mean - down, mean + up, color=colour, alpha=0.2, lw=0)
    if zero:
        px, mean, down, up = stats(zero)
        ax.errorbar(px, mean, yerr=[down, up], color=colour, capsize=3, marker="o", ms=5, ls="none",
                    label=None if rest else label)
