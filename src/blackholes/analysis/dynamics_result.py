"""The result of :func:`blackholes.analysis.dynamics.analyze`: the dataclass, its JSON, its printed report.

The report is the original analysis' three sections (logits, gradients, positions)
at the sampled steps, then every recorded step and the summary. Numpy only.

>>> print(format_ids([0, 1, 2, 5, 7, 8]))
0-2, 5, 7-8
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from blackholes.analysis.ids import format_bytes, format_ids

QUANTITIES = ("logits", "grads", "positions")


# ---------------------------------------------------------------------------- result


@dataclass
class DynamicsResult:
    """Everything :func:`~blackholes.analysis.dynamics.analyze` found; ``report()`` prints it, ``to_json()`` saves it.

    Per-step series (numpy arrays, one value per recorded step, NaN where a value
    does not apply, e.g. gradients at step 0) are in ``series``.
    """

    recording: str
    dtype: str
    shape: tuple[int, int, int]  # (recorded steps, vocab, dim)
    untrained_tokens: list[int]
    untrained_source: str  # "corpus", "tokens" or "metadata"
    trained_tokens: list[int]
    recorded_steps: list[int]
    identical_all_steps: dict[str, bool]
    first_divergence: dict[str, int | None]
    value_equal_not_bitwise: dict[str, list[int]]  # steps where rows differ only in the sign of zero
    trained_identical_all_steps: dict[str, bool]
    trained_first_divergence: dict[str, int | None]
    never_drawn_tokens: list[int] | None  # in the corpus, never drawn into a batch (None: no counts)
    never_drawn: dict | None  # does that second set stay in the hole?
    freeze: dict
    sampled: list[dict]
    skipped_steps: list[int]
    notes: list[str]
    metadata: dict
    series: dict[str, np.ndarray] = field(repr=False)
    rigid_body: bool = False
    verdict: str = ""

    def to_json(self) -> dict:
        """A JSON-safe dict (NaN and inf become null).

        >>> from blackholes.analysis.dynamics import analyze
        >>> from blackholes.io.atomic import write_json
        >>> write_json("dynamics.json", analyze("run.safetensors").to_json())
        """
        return {
            "recording": self.recording,
            "dtype": self.dtype,
            "shape": {"recorded_steps": self.shape[0], "vocab": self.shape[1], "dim": self.shape[2]},
            "metadata": self.metadata,
            "untrained_tokens": self.untrained_tokens,
            "untrained_source": self.untrained_source,
            "trained_tokens": self.trained_tokens,
            "recorded_steps": self.recorded_steps,
            "identical_all_steps": self.identical_all_steps,
            "first_divergence": self.first_divergence,
            "value_equal_not_bitwise": self.value_equal_not_bitwise,
            "trained_identical_all_steps": self.trained_identical_all_steps,
            "trained_first_divergence": self.trained_first_divergence,
            "never_drawn_tokens": self.never_drawn_tokens,
            "never_drawn": self.never_drawn,
            "freeze": self.freeze,
            "rigid_body": self.rigid_body,
            "verdict": self.verdict,
            "sampled": json_safe(self.sampled),
            "skipped_steps": self.skipped_steps,
            "notes": self.notes,
            "series": {name: _json_list(values, boolean=name.endswith("_identical"))
                       for name, values in self.series.items()},
        }

    def report(self) -> str:
        """The printed report: the original's three sections, then every step."""
        return render_report(self)

    def _repr_markdown_(self) -> str:
        """What Jupyter shows: the verdict, then per quantity whether the untrained tokens stayed identical."""
        steps, vocab, dim = self.shape
        lines = [f"**Dynamics of `{self.recording}`**: {steps:,} recorded steps, {vocab:,} × {dim:,} {self.dtype}",
                 "", f"**{self.verdict}**" if self.verdict else "", "",
                 f"- untrained tokens ({self.untrained_source}): {len(self.untrained_tokens):,} "
                 f"({format_ids(self.untrained_tokens)[:120]})",
                 f"- frozen at {self.freeze.get('frozen_count', 0):,} of {steps:,} recorded steps",
                 "", "| quantity | identical at every step | first divergence |", "|---|---|---:|"]
        for q in QUANTITIES:
            same = self.identical_all_steps.get(q)
            first = self.first_divergence.get(q)
            lines.append(f"| {q} | {'yes' if same else 'no'} | {'–' if first is None else f'{first:,}'} |")
        lines += [f"\n*note:* {n}" for n in self.notes]
        return "\n".join(lines)


def finite_or_none(x) -> float | None:
    """``x`` as a float when it is a finite number, else None (for JSON and reports).

    >>> finite_or_none(np.float32(2.5)), finite_or_none(float("nan")), finite_or_none("x")
    (2.5, None, None)
    """
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def nanmax(x: np.ndarray) -> float:
    """Max ignoring NaN; NaN (without numpy's all-NaN warning) when nothing is finite or x is empty."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.max()) if x.size else math.nan


def _json_list(values: np.ndarray, boolean: bool = False) -> list:
    if np.issubdtype(np.asarray(values).dtype, np.integer):
        return [int(v) for v in values]
    arr = np.asarray(values, dtype=np.float64)
    if boolean:
        return [None if not math.isfinite(v) else bool(v) for v in arr.tolist()]
    return [None if not math.isfinite(v) else v for v in arr.tolist()]


def json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- the printed report


def render_report(r) -> str:
    """The printed report of a :class:`~blackholes.analysis.dynamics.DynamicsResult`: what was read,
    the original's three sections at the sampled steps, every step, and the summary."""
    lines = _heading(r)
    sampled = _sampled_bodies(r)
    for title, body in [("LOGIT ANALYSIS", sampled[0]), ("GRADIENT ANALYSIS", sampled[1]),
                        ("POSITION ANALYSIS", sampled[2]),
                        (f"EVERY STEP ({len(r.recorded_steps)} recorded steps)", _every_step(r)),
                        ("SUMMARY", _summary(r))]:
        lines += ["", BAR, title, BAR, ""] + body + [BAR]
    return "\n".join(lines)


BAR = "=" * 80


def _heading(r) -> list[str]:
    steps, vocab, dim = r.shape
    lines = [f"Recording: {r.recording}",
             f"  embeddings [{steps}, {vocab}, {dim}] {r.dtype}; training steps "
             f"{r.recorded_steps[0]}-{r.recorded_steps[-1]} ({steps} recorded)"]
    if r.metadata:
        shown = {k: v for k, v in r.metadata.items() if k in ("sigma", "seed", "dtype", "complete")}
        if shown:
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    src = {"corpus": "bytes absent from the corpus", "tokens": "given with --tokens",
           "metadata": "never_seen ids in the recording's metadata"}[r.untrained_source]
    lines += [f"  Trained: {len(r.trained_tokens)} tokens",
              f"  Untrained (black hole): {len(r.untrained_tokens)} tokens ({src})",
              f"    ids: {format_ids(r.untrained_tokens)}"]
    if vocab <= 256:
        lines.append(f"    bytes: {format_bytes(r.untrained_tokens)}")
    lines.append("  Identity is decided on the raw bits; distances are exact (direct differences in float64, "
                 "mean over distinct pairs).")
    for note in r.notes:
        lines.append(f"  note: {note}")
    return lines


def _sampled_bodies(r) -> tuple[list[str], list[str], list[str]]:
    """The original's three sections (logits, gradients, positions) at the sampled steps."""
    logit_body, grad_body, pos_body = [], [], []
    for e in r.sampled:
        s = e["step"]
        lg = e["logits"]
        logit_body += [f"Step {s:5d}:",
                       f"  Untrained logits: mean={lg['mean']:+.6f}, std={lg['std']:.6e}, range={lg['range']:.6e}",
                       "  → " + _verdict_line("Logits", lg, "std"), ""]
        if "grads" in e:
            g = e["grads"]
            grad_body += [f"Step {s:5d}:",
                          f"  Gradient norms: mean={g['norm_mean']:.6e}, std={g['norm_std']:.6e}",
                          f"  Pairwise distances: max={g['pairwise_max']:.6e}, mean={g['pairwise_mean']:.6e}",
                          "  → " + _verdict_line("Gradients", g, "max dist"), ""]
        p = e["positions"]
        pos_body += [f"Step {s:5d}:",
                     f"  Position pairwise distances: max={p['pairwise_max']:.6e}, mean={p['pairwise_mean']:.6e}",
                     "  → " + _verdict_line("Positions", p, "max dist"), ""]
    if r.skipped_steps:
        skipped = "  (skipped, not recorded: " + ", ".join(str(s) for s in r.skipped_steps) + ")"
        for body in (logit_body, grad_body, pos_body):
            body.append(skipped)
    return logit_body, grad_body, pos_body


def _every_step(r) -> list[str]:
    """Identity at every recorded step, the centroid's travel, the freeze."""
    body = []
    n = len(r.recorded_steps)
    names = {"logits": "Logits", "grads": "Gradients", "positions": "Positions"}
    for q in QUANTITIES:
        counted = n - 1 if q == "grads" else n
        ident = r.series[f"{q}_identical"]
        k = int(np.nansum(ident))
        fd = r.first_divergence[q]
        line = f"  {names[q]:9s} bit-identical at {k}/{counted} steps"
        line += "" if fd is None else f"; first differ at step {fd}"
        spread = r.series[f"{q}_spread"]
        if np.any(spread > 0):
            line += f"; max spread {np.nanmax(spread):.6e}"
        body.append(line)
        if r.value_equal_not_bitwise[q]:
            ss = r.value_equal_not_bitwise[q]
            body.append(f"    at {len(ss)} step(s) (first: {ss[0]}) rows are equal in value (distance 0) "
                        f"but NOT bit-identical: they differ only in the sign of zero")
    if r.trained_first_divergence:
        body.append("  Trained tokens, for contrast: " + ", ".join(
            f"{q} " + ("identical throughout" if r.trained_first_divergence[q] is None
                       else f"differ from step {r.trained_first_divergence[q]}") for q in QUANTITIES))
    disp = r.series["displacement"][1:]
    path = float(np.nansum(disp))
    gn = r.series["shared_grad_norm"][1:]
    body.append(f"  Centroid: travelled {path:.6e} in total, ending {r.series['centroid_distance_from_start'][-1]:.6e}"
                f" from where it started; speed max {nanmax(r.series['speed'][1:]):.6e} per step,"
                f" last {r.series['speed'][-1]:.6e}")
    which = "Shared gradient norm" if r.identical_all_steps["grads"] else "Norm of the untrained tokens' mean gradient"
    body.append(f"  {which}: first {gn[0]:.6e}, last {gn[-1]:.6e}, max {nanmax(gn):.6e}")
    return body + _freeze_lines(r) + _never_drawn_lines(r)


def _freeze_lines(r) -> list[str]:
    body, fz, n = [], r.freeze, len(r.recorded_steps)
    if r.recorded_steps[-1] != n - 1:  # --every K: changes are measured between consecutive records
        body.append("  (recorded every few steps: frozen and update sizes below compare consecutive records, "
                    "not single training steps)")
    if fz["frozen_count"]:
        body.append(f"  Frozen (no bit of the hole changed) at {fz['frozen_count']} of {n - 1} steps, first at step "
                    f"{fz['first_frozen']}; at {fz['frozen_with_gradient_count']} of them the gradient was not zero "
                    f"yet no bit moved (an update below one ulp of {fz['dtype']} rounds away)")
    else:
        body.append("  Never frozen: the hole moved at every step")
    first_ulps, last_ulps = fz["update_ulps_median_first"], fz["update_ulps_median_last"]
    if first_ulps is not None or last_ulps is not None:  # None: not finite (e.g. the run went NaN)
        body.append(f"  Update size (median over the hole's coordinates): {_fmt_g(first_ulps)} ulp of "
                    f"{fz['dtype']} at the first step, {_fmt_g(last_ulps)} at the last; below 1 ulp "
                    f"(most coordinates unchanged) at {fz['steps_median_update_below_1_ulp']} of {n - 1} steps")
    if fz["steps_partly_frozen"]:
        body.append(f"  Partly frozen at {fz['steps_partly_frozen']} steps (some coordinates' updates rounded away; "
                    f"on average {100 * fz['mean_frozen_fraction']:.1f}% of coordinates unchanged per step)")
    return body


def _never_drawn_lines(r) -> list[str]:
    body = []
    if r.never_drawn_tokens is not None:
        if not r.never_drawn_tokens:
            body.append("  Tokens in the corpus but never drawn into a batch: none")
        else:
            nd = r.never_drawn
            stays = "stay in the hole (bit-identical to it at every step)" if nd["stays_in_hole"] else (
                "leave the hole: " + ", ".join(f"{q} differ from step {s}" for q, s in nd["first_divergence"].items()
                                              if s is not None))
            body.append(f"  Tokens in the corpus but never drawn into a batch: {len(r.never_drawn_tokens)} "
                        f"({format_ids(r.never_drawn_tokens)}); they {stays}")
    return body


def _summary(r) -> list[str]:
    ok = r.identical_all_steps
    mark = {True: "✓", False: "✗"}
    summary = [
        "Hypothesis: Black hole moves because untrained tokens receive identical gradients.",
        "",
        "Causal chain:",
        "  1. Tokens at same position → identical when dotted with hidden state",
        "  2. Identical dot products → identical logits",
        "  3. Identical logits → identical gradients (after loss backward)",
        "  4. Identical gradients → tokens move together (stay coincident)",
        "  5. Still coincident → cycle repeats",
        "",
        f"Result: {r.verdict}",
        "",
        f"Checked at every recorded step, bit for bit:",
        f"  {mark[ok['positions']]} Positions identical? (supermassive BH = all at one point)",
        f"  {mark[ok['logits']]} Logits identical? (same position → same score)",
        f"  {mark[ok['grads']]} Gradients identical? (same score → same update)",
    ]
    if r.rigid_body:
        summary += ["", "Implication for thermodynamics:",
                    "  The black hole HAS NO INTERNAL MOTION.",
                    "  It moves as a single object, not a gas of particles.",
                    "  Temperature of black hole = 0 (no relative motion)."]
    return summary


def _verdict_line(name: str, e: dict, metric: str) -> str:
    v = e["verdict"]
    if v == "IDENTICAL":
        extra = ": all tokens at same point" if name == "Positions" else ""
        return f"{name} are IDENTICAL (bit-for-bit{extra})"
    if v == "equal in value, not bitwise":
        return (f"{name} are equal in value (distance 0) but NOT bit-identical: "
                f"they differ only in the sign of zero")
    if v == "nearly identical":
        extra = " (tight cluster)" if name == "Positions" else ""
        return f"{name} are nearly identical ({metric} < 1e-3){extra}"
    return f"{name} vary" + (" (tokens spread out)" if name == "Positions" else "")


def _fmt_g(x: float | None) -> str:
    """``1.5`` -> '1.5'; None (a value that was not finite) -> 'not finite'."""
    return "not finite" if x is None else f"{x:g}"
