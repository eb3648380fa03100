"""The verification part of a model's report page (``scan ... --verify --report DIR``).

Three things, after the answer's lines on the holes:

* the answer: how many tokens the model itself verifies as under-trained beyond the dead ones (the holes), and
  which; how many hole members it could still produce;
* the verdict table of every token tested;
* the indicator against the verification probability (``plots/verification.png``), the picture magikarp's reports
  are read by, and the tokens where the two disagree.

Verification: Land & Bartolo (2024), "Fishing for Magikarp" — see :mod:`blackholes.verify`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blackholes.render.report_answer import as_code, id_ranges

PLOT = "verification.png"
VERIFIED = 0.01  # magikarp's summaries: verified below this
REJECTED = 0.1  # weak_rejected above this
TABLE_ROWS = 60


def indicator_result(result):
    """The scan result whose indicator and holes the verdicts are read against: the output matrix's when there
    are two (the one a token is produced from), else the only one."""
    results = getattr(result, "results", None)
    return results[-1] if results else result


def hole_members(result) -> set[int]:
    return {t for r in getattr(result, "results", [result]) for g in r.groups for t in g.token_ids}


def answer_lines(result, v) -> list[str]:
    """The page's first lines about verification: dead (holes), and how many more the model verifies, and which."""
    holes = hole_members(result)
    verified = [t for t in v.tokens if t.max_prob < VERIFIED]
    more = [t for t in verified if t.id not in holes]
    tested_holes = [t for t in v.tokens if t.id in holes]
    n = len(more)
    lines = [f"**{n:,} more token{'' if n == 1 else 's'} {'is' if n == 1 else 'are'} verified as under-trained** by "
             f"the model itself, beyond the {len(holes):,} dead ones in holes: of {len(v.tokens):,} tokens tested "
             f"({v.method}, {v.dtype}), "
             f"{len(verified):,} never reach probability {VERIFIED} when the model is asked to repeat them."]
    if more:
        shown = ", ".join(f"{t.id} {as_code(t.text or '')}" for t in sorted(more, key=lambda t: t.max_prob)[:12])
        lines.append(f"Verified beyond the holes: {shown}" + (f", ... ({len(more):,} in all)" if len(more) > 12
                                                              else "") + ".")
    produced = [t for t in tested_holes if t.max_prob > REJECTED]
    if tested_holes:
        lines.append(f"Of the {len(tested_holes):,} hole members tested, {len(tested_holes) - len(produced):,} are "
                     f"never produced; {len(produced):,} are" + (f" ({id_ranges([t.id for t in produced])})"
                                                                 if produced else "") + " (rejected).")
    if not v.complete:
        lines.append("Verification was interrupted: these counts cover the tokens done so far.")
    return lines


def section(doc, result, v, plots: Path) -> list[tuple[Path, str]]:
    """The verdict table, the scatter plot and the disagreements; returns the plot drawn (path, caption)."""
    r = indicator_result(result)
    values = _indicator(r)
    holes = hole_members(result)
    doc.heading("Verified by the model")
    doc.para(f"Each token was put in magikarp's three prompts (Land & Bartolo 2024) in place of the placeholder "
             f"{as_code(v.placeholder.get('text', ''))}; the model continued greedily for 3 tokens, and the score "
             f"is the highest probability it gave the token. {v.method}, {v.dtype} on {v.device}, "
             f"{v.seconds:.1f} s.")
    rows = []
    for t in sorted(v.tokens, key=lambda t: t.max_prob)[:TABLE_ROWS]:
        kind = "hole" if t.id in holes else "candidate"
        value = "" if values is None or not np.isfinite(values[t.id]) else f"{values[t.id]:.3g}"
        probs = ", ".join("-" if p is None else f"{p:.1e}" for p in t.probs.values())
        rows.append([str(t.id), as_code(t.text or ""), kind, value, f"{t.max_prob:.2e}", t.verdict, probs])
    doc.table(["id", "token", "from", "indicator", "max prob", "verdict", "per prompt (" +
               ", ".join(t for t in (v.tokens[0].probs if v.tokens else {})) + ")"], rows)
    if len(v.tokens) > TABLE_ROWS:
        doc.para(f"... {len(v.tokens) - TABLE_ROWS:,} more (all in the JSON's `verification` section).")
    drawn = []
    if values is not None and v.tokens:
        path = plot(v, values, holes, getattr(r.indicators, "threshold", None), plots / PLOT)
        caption = ("The under-trained indicator of each tested token against the highest probability the model "
                   "gave it (log scale): verified tokens lie below the dotted line at 0.01, rejected ones above "
                   "0.1. Holes in red, other candidates in orange.")
        doc.image(path, caption)
        drawn.append((path, caption))
    _disagreements(doc, v, values, holes, getattr(r.indicators, "threshold", None))
    return drawn


def _tokens(n: int) -> str:
    return f"{n:,} token" + ("" if n == 1 else "s")


def _indicator(r):
    if getattr(r, "indicators", None) is None:
        return None
    return np.asarray(r.indicators.values(), dtype=np.float64)


def _disagreements(doc, v, values, holes: set[int], threshold) -> None:
    """Flagged dead by the weights (a hole member, or an indicator at or below the threshold) but produced by the
    model; or verified though the indicator is above the threshold."""
    doc.heading("Where verification and the indicator disagree", 3)
    produced = [t for t in v.tokens if t.max_prob > REJECTED]
    unflagged = [] if values is None or threshold is None else [
        t for t in v.tokens if t.max_prob < VERIFIED and t.id not in holes and values[t.id] > threshold]
    items = []
    if produced:
        items.append(f"{_tokens(len(produced))} flagged by the weights that the model still produces (rejected): "
                     + ", ".join(
            f"{t.id} {as_code(t.text or '')} ({t.max_prob:.2f})" for t in produced[:15])
            + (" ..." if len(produced) > 15 else ""))
    if unflagged:
        items.append(f"{_tokens(len(unflagged))} verified although their indicator is above the threshold: "
                     + id_ranges([t.id for t in unflagged]))
    doc.bullets(items or ["none: every tested token the weights flag is one the model does not produce."])


def plot(v, values: np.ndarray, holes: set[int], threshold, path: Path) -> Path:
    """Indicator (x) against verification probability (y, log), holes and candidates coloured."""
    from blackholes.render.plots import save_figure
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    floor = 1e-12
    for name, colour, pick in (("candidates", "tab:orange", lambda t: t.id not in holes),
                               ("hole members", "tab:red", lambda t: t.id in holes)):
        ts = [t for t in v.tokens if pick(t) and np.isfinite(values[t.id])]
        if ts:
            ax.scatter([values[t.id] for t in ts], [max(t.max_prob, floor) for t in ts], s=14, c=colour, lw=0,
                       label=f"{name} ({len(ts):,})")
    ax.set_yscale("log")
    ax.axhline(VERIFIED, ls=":", c="k", lw=0.9, label=f"verified below {VERIFIED}")
    ax.axhline(REJECTED, ls="--", c="0.5", lw=0.9, label=f"rejected above {REJECTED}")
    if threshold is not None:
        ax.axvline(threshold, ls="--", c="tab:blue", lw=0.9, label=f"indicator threshold ({threshold:.3g})")
    ax.set_xlabel("under-trained indicator (low = dead)")
    ax.set_ylabel("highest probability of the token\n(magikarp's prompts)")
    ax.legend(fontsize=8.5, loc="best")
    ax.set_title(f"indicator against verification ({v.method}, {v.dtype})", fontsize=10.5)
    return save_figure(fig, path)
