"""Drawing and printing a census (:mod:`blackholes.analysis.lifecycle`).

matplotlib is imported inside the plot functions only; every PNG is written
atomically through :func:`blackholes.render.plots.save_figure`.

>>> from blackholes.analysis.lifecycle import census
>>> c = census(np.zeros((3, 4, 2), np.uint16), "BF16", [0, 1, 2])
>>> print(census_summary(c).splitlines()[0])
Census of 3 recorded steps (0 to 2), 4 tokens x 2 BF16: every step exact (bit identity)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FISSION_COLOUR, MERGER_COLOUR = "#c0392b", "#2166ac"
DEAD_COLOUR, TRAINED_COLOUR = "#7f3b08", "#4393c3"


def _step_axis(ax, steps: np.ndarray) -> None:
    """Symmetric-log step axis: the early steps, where holes form, get room; 0 stays on it."""
    if steps[-1] > 100 * max(1, int(steps[1] - steps[0])):
        ax.set_xscale("symlog", linthresh=max(1, int(steps[1] - steps[0])), linscale=0.5)
    ax.set_xlim(steps[0], steps[-1])
    ax.set_xlabel("training step" + (" (symmetric log scale)" if ax.get_xscale() == "symlog" else ""))


def _mark_events(axes, census) -> list:
    """Each fission / merger as a faint line on every panel and a triangle on the top edge."""
    handles = []
    for kind, colour, marker in (("fission", FISSION_COLOUR, "v"), ("merger", MERGER_COLOUR, "^")):
        at = sorted({e.step for e in census.events if e.kind == kind})
        if not at:
            continue
        for ax in axes:
            for s in at:
                ax.axvline(s, color=colour, lw=0.6, alpha=0.25, zorder=0)
        top = axes[0]
        count = sum(e.kind == kind for e in census.events)
        (h,) = top.plot(at, [1.0] * len(at), linestyle="none", marker=marker, color=colour, ms=6, clip_on=False,
                        transform=top.get_xaxis_transform(), label=f"{kind} ({count:,})")
        handles.append(h)
    return handles


def plot_census(census, path: str | os.PathLike) -> Path:
    """Holes and tokens in holes against step, fissions and mergers marked; a PNG at ``path``.

    >>> plot_census(census_of_recording("run.safetensors"), "census.png")   # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    from blackholes.render.plots import save_figure

    steps = census.steps
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 2))
    top.step(steps, census.tokens_in_holes, where="post", color="black", lw=1.6, label="tokens in holes")
    top.step(steps, census.largest, where="post", color="#888888", lw=1.2, ls="--", label="largest hole")
    top.set_ylabel("tokens")
    top.set_ylim(0, max(2, int(census.tokens_in_holes.max())) * 1.08)
    bottom.step(steps, census.holes, where="post", color="#1b7837", lw=1.6, label="holes (groups of >= 2)")
    bottom.set_ylabel("holes")
    bottom.set_ylim(0, max(1, int(census.holes.max())) * 1.15 + 0.5)
    bottom.yaxis.get_major_locator().set_params(integer=True)
    _step_axis(bottom, steps)
    handles = _mark_events((top, bottom), census)
    frozen = census.frozen_from.get("holes")
    if frozen is not None and census.tokens_in_holes[-1] > 0:
        for ax in (top, bottom):
            ax.axvline(frozen, color="#5e3c99", ls=":", lw=1.4)
        top.annotate(f"holes frozen from step {frozen:,}", (frozen, 0.06), xycoords=("data", "axes fraction"),
                     xytext=(-4, 0), textcoords="offset points", ha="right", color="#5e3c99", fontsize=9)
    top.legend(handles=top.get_lines()[:2] + handles, loc="best", fontsize=9, framealpha=0.9)
    bottom.legend(loc="best", fontsize=9, framealpha=0.9)
    R, V, _ = census.shape
    top.set_title(f"Black holes at each of {R:,} recorded steps ({V} tokens, exact bit identity)", pad=14)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_last_motion(census, path: str | os.PathLike, dead_ids) -> Path:
    """Histogram of the last step at which each row changed any bit: dead vs trained tokens.

    Rows that never changed are counted in their own bar at the left ("never").

    >>> plot_last_motion(c, "last_motion.png", c.never_seen["tokens"])      # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    from blackholes.render.plots import save_figure

    dead = set(int(t) for t in dead_ids)
    V = census.shape[1]
    last = np.array([np.nan if s is None else s for s in census.last_motion], dtype=np.float64)
    is_dead = np.array([t in dead for t in range(V)])
    edges = _motion_bins(census.steps, last[np.isfinite(last)])
    fig, (never_ax, ax) = plt.subplots(1, 2, figsize=(9, 4.5), sharey=True, width_ratios=(1, 9))
    groups = [(is_dead, DEAD_COLOUR, f"dead ({int(is_dead.sum())})"),
              (~is_dead, TRAINED_COLOUR, f"trained ({int((~is_dead).sum())})")]
    moved = [last[m & np.isfinite(last)] for m, _, _ in groups]
    ax.hist(moved, bins=edges, stacked=True, color=[c for _, c, _ in groups], label=[lab for _, _, lab in groups])
    bottom = 0
    for m, colour, _ in groups:
        n = int((m & np.isnan(last)).sum())
        never_ax.bar(0, n, bottom=bottom, color=colour, width=0.6)
        bottom += n
    never_ax.annotate(f"{bottom:,}", (0, bottom), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=9)
    never_ax.set_xticks([0], ["never"])
    never_ax.set_xlim(-0.6, 0.6)
    never_ax.set_ylabel("tokens")
    if edges[-1] > 100 * max(1, edges[1] - edges[0]):
        ax.set_xscale("log")
    ax.set_xlabel("last step at which the row changed any bit")
    ax.legend(loc="upper center", fontsize=9)
    ax.set_title("When each token stopped moving")
    for a in (never_ax, ax):
        a.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def _motion_bins(steps: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Bin edges from the earliest last motion to the last step: logarithmic when that spans
    more than two decades, one bin per step when it is short, else 40 even bins."""
    first = int(moved.min()) if moved.size else int(steps[1])
    last = int(steps[-1])
    if last > 100 * max(1, first):
        return np.unique(np.geomspace(first, last + 1, 41))
    if last - first < 60:
        return np.arange(first, last + 2) - 0.5
    return np.linspace(first, last + 1, 41)


def _frozen_words(census, name: str, step: int | None) -> str:
    if name == "holes" and census.tokens_in_holes[-1] == 0:
        return "(none at the end)"
    return f"from step {step:,}" if step is not None else "still moving at the end"


def census_summary(census, top: int = 5) -> str:
    """A short printed account: counts at the start and end, events, freezes, the largest holes."""
    R, V, D = census.shape
    s = census.steps
    lines = [f"Census of {R:,} recorded steps ({s[0]:,} to {s[-1]:,}), {V:,} tokens x {D:,} {census.dtype}: "
             "every step exact (bit identity)"]
    for i, name in ((0, "first"), (R - 1, "last")):
        lines.append(f"  {name} step {s[i]:,}: {census.distinct[i]:,} distinct vectors, {census.holes[i]:,} "
                     f"hole(s), {census.tokens_in_holes[i]:,} tokens in holes (largest {census.largest[i]:,})")
    kinds = [e.kind for e in census.events]
    lines.append(f"  events: {kinds.count('fission'):,} fission(s), {kinds.count('merger'):,} merger(s) at "
                 f"{len(census.partition_changes):,} step(s)")
    frozen = ", ".join(f"{k} {_frozen_words(census, k, v)}" for k, v in census.frozen_from.items()
                       if (k != "trained" or census.trained_tokens is not None) and (k != "never_seen" or census.never_seen))
    lines.append(f"  frozen: {frozen}")
    if census.never_seen is not None:
        ns = census.never_seen
        where = "one point at every step" if ns["one_point_all_steps"] else f"apart from step {ns['first_apart']:,}"
        lines.append(f"  never-seen tokens ({len(ns['tokens']):,}): {where}")
    for h in sorted(census.lineages, key=lambda h: (-len(h.members), h.id))[:top]:
        fate = {"alive": "alive at the end", "dissolved": f"dissolved after step {h.last_seen:,}",
                "absorbed": f"absorbed into hole {h.absorbed_into} after step {h.last_seen:,}"}[h.end]
        counts = ", ".join(f"{n:,} {p}" for p, n in h.phase_counts.items() if n)
        lines.append(f"  hole {h.id}: {len(h.members):,} tokens, born at step {h.born:,} ({h.origin}), {fate}"
                     + (f"; steps {counts}" if counts else ""))
    return "\n".join(lines)
