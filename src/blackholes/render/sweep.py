"""The sweep's pages: phase diagrams of the training sweep, and the coarsening sweep's fit.

``write_sweep_report(DIR)`` reads what ``blackholes sweep`` left in DIR and writes:

* from ``runs.jsonl`` (one finished run a line) and ``steps.safetensors`` (per-step
  counts ``[runs, steps + 1]``): ``sweep.md``, ``sweep.html`` and ``plots/sweep_final.png``
  (final tokens in holes and number of holes against σ: one curve per precision — and per
  any other option that varies —, the mean over seeds with min–max bars),
  ``plots/sweep_freeze.png`` (the step the hole freezes from, against σ) and
  ``plots/sweep_steps.png`` (holes and tokens in holes at every step, for a few σ);
* from ``coarsening.json`` (``blackholes sweep --no-train``): ``coarsening.md``,
  ``coarsening.html`` and ``plots/coarsening_*.png``.

σ axes are logarithmic; σ = 0 gets its own place one decade left of the smallest σ, ticked "0".

>>> paths = write_sweep_report("sweep_dir")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.atomic import write_text
from blackholes.render.page import Document

SWEEP_PLOTS = {
    "final": ("sweep_final.png", "Where the run ends: tokens in holes (left) and number of holes (right) against "
                                 "the initial spread σ; one curve per precision, the mean over seeds, bars from the "
                                 "smallest to the largest seed."),
    "freeze": ("sweep_freeze.png", "The step the hole freezes from (no bit of it changes again) against σ; mean over "
                                   "the seeds that froze, bars min–max; × marks a run whose hole never froze (or "
                                   "that had no hole), drawn at its last step."),
    "steps": ("sweep_steps.png", "Holes (top) and tokens in holes (bottom) at every recorded step, for a few σ; "
                                 "the mean over seeds, shaded min–max."),
}
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
STEP_SIGMAS = 4  # σ values drawn step by step
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def write_sweep_report(out_dir: str | os.PathLike) -> list[Path]:
    """Write the sweep pages for whatever DIR holds (training sweep, coarsening sweep, or both).

    Returns the paths written: the pages first, then the PNGs. Refused (one line) when DIR
    holds neither ``runs.jsonl`` nor ``coarsening.json``.
    """
    out = Path(out_dir)
    runs_file, coarse_file = out / "runs.jsonl", out / "coarsening.json"
    if not runs_file.is_file() and not coarse_file.is_file():
        raise BlackholesError(f"{out} holds no sweep: neither runs.jsonl nor coarsening.json")
    written: list[Path] = []
    if runs_file.is_file():
        runs, skipped = read_runs(runs_file)
        steps = read_steps(out / "steps.safetensors") if (out / "steps.safetensors").is_file() else None
        plots = draw_sweep_plots(out / "plots", runs, steps)
        doc = sweep_document(out, runs, steps, plots, skipped=skipped)
        if coarse_file.is_file():
            doc.para("This folder also holds a sweep without training (rounding alone): `coarsening.html`.")
        written += _write_pages(doc, out, "sweep") + list(plots.values())
    if coarse_file.is_file():
        written += write_coarsening_report(out, read_coarsening(coarse_file))
    return written


def _write_pages(doc: Document, out: Path, stem: str) -> list[Path]:
    md, page = out / f"{stem}.md", out / f"{stem}.html"
    write_text(md, doc.markdown())
    write_text(page, doc.html())
    return [page, md]


# ---------------------------------------------------------------------------- reading DIR


def read_runs(path: str | os.PathLike) -> tuple[list[dict], int]:
    """``(runs, skipped)``: the JSON objects of ``runs.jsonl``, and how many lines were unreadable
    (a run killed while writing its line leaves a partial last line).

    >>> _ = Path("runs.jsonl").write_text('{"run": 0, "options": {"sigma": 0}}\\n{"run": 1, "opt')
    >>> [r["run"] for r in read_runs("runs.jsonl")[0]], read_runs("runs.jsonl")[1]
    ([0], 1)
    """
    runs, skipped = [], 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("options"), dict):
            runs.append(row)
        else:
            skipped += 1
    return runs, skipped


def read_steps(path: str | os.PathLike) -> dict:
    """``steps.safetensors`` as ``{"runs": [ids], "steps": [numbers], name: array [runs, steps]}``.

    One line on a file that does not follow the format (missing metadata, shapes that disagree).
    """
    from blackholes.io.safetensors import open_tensor, read_header

    header = read_header(path)
    try:
        run_ids = [int(r) for r in json.loads(header.metadata["runs"])]
        step_numbers = [int(s) for s in json.loads(header.metadata["steps"])]
    except (KeyError, ValueError, TypeError):
        raise BlackholesError(f"{path}: its metadata must hold 'runs' and 'steps' (JSON lists)") from None
    out = {"runs": run_ids, "steps": step_numbers}
    for name, info in header.tensors.items():
        if tuple(info.shape) != (len(run_ids), len(step_numbers)):
            raise BlackholesError(f"{path}: {name} has shape {list(info.shape)}, expected "
                                  f"[{len(run_ids)}, {len(step_numbers)}] (runs x steps)")
        out[name] = np.array(open_tensor(path, name, header))
    return out


def read_coarsening(path: str | os.PathLike) -> dict:
    """The ``coarsening.json`` of a ``--no-train`` sweep (one line when it is not one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BlackholesError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != "blackholes.coarsening":
        raise BlackholesError(f"{path} is not a coarsening sweep (format blackholes.coarsening)")
    return data


# ---------------------------------------------------------------------------- the training sweep: numbers


def series_label(run: dict, varying: list[str]) -> str:
    """A run's curve: its precision, plus every other option that varies across the sweep.

    >>> series_label({"options": {"precision": "bf16", "init": "unit", "sigma": 0}}, ["init"])
    'bf16, init=unit'
    """
    o = run["options"]
    parts = [str(o.get("precision", "?"))] + [f"{k}={o.get(k)}" for k in varying]
    return ", ".join(parts)


def varying_options(runs: list[dict]) -> list[str]:
    """Options (other than σ, seed and precision) that differ between runs, sorted.

    >>> varying_options([{"options": {"sigma": 0, "lr": 1}}, {"options": {"sigma": 1, "lr": 2}}])
    ['lr']
    """
    keys = sorted({k for r in runs for k in r["options"]} - {"sigma", "seed", "precision"})
    return [k for k in keys if len({json.dumps(r["options"].get(k), sort_keys=True) for r in runs}) > 1]


def spread(values: list) -> dict | None:
    """``{"mean", "min", "max", "n"}`` of the numbers given (None when there are none).

    >>> spread([1, 3, None])
    {'mean': 2.0, 'min': 1, 'max': 3, 'n': 2}
    """
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict]) -> dict[str, list[dict]]:
    """Per curve, per σ (ascending): the seeds' final counts, freeze steps and losses.

    >>> rows = summarise([{"options": {"sigma": 0, "precision": "bf16"}, "final": {"holes": 1}, "error": None}])
    >>> rows["bf16"][0]["holes"]
    {'mean': 1.0, 'min': 1, 'max': 1, 'n': 1}
    """
    good = [r for r in runs if not r.get("error")]
    varying = varying_options(good)
    curves: dict[str, dict[float, list[dict]]] = {}
    for r in good:
        curves.setdefault(series_label(r, varying), {}).setdefault(float(r["options"].get("sigma", 0)), []).append(r)
    out = {}
    for label in sorted(curves):
        rows = []
        for sigma in sorted(curves[label]):
            at = curves[label][sigma]
            final = [r.get("final") or {} for r in at]
            rows.append({
                "sigma": sigma, "seeds": len(at),
                **{k: spread([f.get(k) for f in final]) for k in ("holes", "tokens_in_holes", "largest")},
                "freeze": spread([r.get("freeze_step") for r in at]),
                "never_froze": sum(1 for r in at if r.get("freeze_step") is None),
                "last_step": max(int(r["options"].get("steps") or 0) for r in at),
                "loss": spread([r.get("final_loss") for r in at]),
                "seconds": spread([r.get("seconds") for r in at]),
            })
        out[label] = rows
    return out


def fmt_sigma(sigma: float) -> str:
    """σ as people write it.

    >>> fmt_sigma(0.0), fmt_sigma(1e-05), fmt_sigma(0.25), fmt_sigma(3.1622776601683795e-06)
    ('0', '1e-05', '0.25', '3.16e-06')
    """
    return "0" if sigma == 0 else f"{sigma:.3g}"


def _range(s: dict | None, fmt: str = "{:,.0f}") -> str:
    """``mean [min–max]`` (or just the value when all seeds agree); whole numbers stay whole.

    >>> _range({"mean": 2.5, "min": 1, "max": 4}, "{:,.1f}"), _range({"mean": 3.0, "min": 3, "max": 3})
    ('2.5 [1–4]', '3')
    """
    if s is None:
        return "–"
    ends = [f"{v:,}" if isinstance(v, int) else fmt.format(v) for v in (s["min"], s["max"])]
    if s["min"] == s["max"]:
        return ends[0]
    return f"{fmt.format(s['mean'])} [{ends[0]}–{ends[1]}]"


def _holes(s: dict | None) -> str:
    """``1 hole``, ``3 holes``, ``1.5 [1–2] holes``.

    >>> _holes({"mean": 1.0, "min": 1, "max": 1}), _holes({"mean": 1.5, "min": 1, "max": 2})
    ('1 hole', '1.5 [1–2] holes')
    """
    one = s is not None and s["min"] == s["max"] == 1
    return f"{_range(s, '{:,.1f}')} hole" + ("" if one else "s")


# ---------------------------------------------------------------------------- the training sweep: the page


def sweep_document(out_dir: Path, runs: list[dict], steps: dict | None, plots: dict[str, Path], *,
                   skipped: int = 0) -> Document:
    """The training sweep's page as a :class:`~blackholes.render.page.Document`."""
    failed = [r for r in runs if r.get("error")]
    table = summarise(runs)
    sigmas = sorted({float(r["options"].get("sigma", 0)) for r in runs})
    seeds = sorted({r["options"].get("seed") for r in runs}, key=str)
    doc = Document(f"Black-hole sweep: {len(runs):,} runs", out_dir)
    doc.para(f"**{len(runs) - len(failed):,}** runs finished ({len(failed):,} failed): {len(sigmas):,} values of σ "
             f"(the initial spread of the embedding rows around one shared point), {len(seeds):,} seed(s), "
             f"{len(table):,} curve(s): {', '.join(f'`{k}`' for k in table) or 'none'}.")
    doc.bullets([_answer(label, rows) for label, rows in table.items()] or ["No run finished."])
    for label, rows in table.items():
        doc.heading(f"{label}")
        doc.table(["σ", "seeds", "holes", "tokens in holes", "largest hole", "freezes from step", "final loss", "s"],
                  [[fmt_sigma(r["sigma"]), str(r["seeds"]), _range(r["holes"]), _range(r["tokens_in_holes"]),
                    _range(r["largest"]), _freeze_cell(r), _range(r["loss"], "{:.3f}"), _range(r["seconds"], "{:.1f}")]
                   for r in rows])
    if plots:
        doc.heading("Phase diagrams")
        for name, (_, caption) in SWEEP_PLOTS.items():
            if name in plots:
                doc.image(plots[name], caption)
    if failed:
        doc.heading("Failed runs")
        doc.table(["run", "σ", "seed", "precision", "error"],
                  [[str(r.get("run")), fmt_sigma(float(r["options"].get("sigma", 0))), str(r["options"].get("seed")),
                    str(r["options"].get("precision")), str(r["error"])] for r in failed])
    notes = "Rows: `runs.jsonl` (one per finished run)" + ("; per-step counts: `steps.safetensors`." if steps else ".")
    if skipped:
        notes += f" {skipped:,} unreadable line(s) of runs.jsonl were skipped (a run interrupted while writing)."
    doc.para(notes)
    return doc


def _answer(label: str, rows: list[dict]) -> str:
    """One sentence per curve: what σ = 0 gives, and up to which σ holes survive."""
    parts = [f"**{label}**:"]
    zero = next((r for r in rows if r["sigma"] == 0), None)
    if zero is not None and zero["tokens_in_holes"] is not None:
        parts.append(f"at σ = 0 the runs end with {_range(zero['tokens_in_holes'])} tokens in "
                     f"{_holes(zero['holes'])};")
    some = [r for r in rows if r["holes"] is not None and r["holes"]["max"] > 0]
    if not some:
        parts.append("no run ends with a hole.")
        return " ".join(parts)
    last = max(r["sigma"] for r in some)
    parts.append(f"holes survive up to σ = {fmt_sigma(last)} (in at least one seed)")
    after = [r for r in rows if r["sigma"] > last]
    parts.append(f"and none is left from σ = {fmt_sigma(after[0]['sigma'])} on." if after
                 else "— the largest σ swept; widen the grid to see them vanish.")
    return " ".join(parts)


def _freeze_cell(row: dict) -> str:
    if row["freeze"] is None:
        return "never" if row["never_froze"] else "–"
    cell = _range(row["freeze"])
    return cell + (f" ({row['never_froze']} never)" if row["never_froze"] else "")


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


def _band(ax, x, s_rows: list[dict | None], colour: str, label: str, *, bars: bool, sigmas=None):
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


# ---------------------------------------------------------------------------- the training sweep: plots


def draw_sweep_plots(folder: Path, runs: list[dict], steps: dict | None) -> dict[str, Path]:
    """The phase diagrams as PNGs in ``folder`` (none when no run finished)."""
    table = summarise(runs)
    if not table:
        return {}
    from blackholes.render.plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    out = {"final": save_figure(_final_figure(table), folder / SWEEP_PLOTS["final"][0]),
           "freeze": save_figure(_freeze_figure(table, runs), folder / SWEEP_PLOTS["freeze"][0])}
    figure = _steps_figure(runs, steps) if steps is not None else None
    if figure is not None:
        out["steps"] = save_figure(figure, folder / SWEEP_PLOTS["steps"][0])
    return out


def _final_figure(table: dict[str, list[dict]]):
    import matplotlib.pyplot as plt
    from blackholes.render.plots import literal

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    sigmas = sorted({r["sigma"] for rows in table.values() for r in rows})
    for ax, key, title in ((axes[0], "tokens_in_holes", "Tokens in holes at the end"),
                           (axes[1], "holes", "Number of holes at the end")):
        x = sigma_axis(ax, sigmas)
        for i, (label, rows) in enumerate(table.items()):
            at = _dodge(ax, x([r["sigma"] for r in rows]), i, len(table))
            _band(ax, at, [r[key] for r in rows], COLOURS[i % len(COLOURS)],
                  literal(label), bars=True, sigmas=[r["sigma"] for r in rows])
        ax.set_title(title)
        ax.set_ylabel(title.split(" at")[0].lower())
        _counts_axis(ax)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="precision", title_fontsize=8)
    fig.tight_layout()
    return fig


def _freeze_figure(table: dict[str, list[dict]], runs: list[dict]):
    import matplotlib.pyplot as plt
    from blackholes.render.plots import literal

    fig, ax = plt.subplots(figsize=(8, 4.3))
    sigmas = sorted({r["sigma"] for rows in table.values() for r in rows})
    x = sigma_axis(ax, sigmas)
    last = max(r["last_step"] for rows in table.values() for r in rows)
    for i, (label, rows) in enumerate(table.items()):
        colour = COLOURS[i % len(COLOURS)]
        at = _dodge(ax, x([r["sigma"] for r in rows]), i, len(table))
        _band(ax, at, [r["freeze"] for r in rows], colour, literal(label), bars=True,
              sigmas=[r["sigma"] for r in rows])
        never = [j for j, r in enumerate(rows) if r["never_froze"]]
        if never:
            ax.scatter(at[never], [rows[j]["last_step"] for j in never], marker="x", color=colour, s=45, zorder=3)
    if any(r["never_froze"] for rows in table.values() for r in rows):
        ax.scatter([], [], marker="x", color="0.3", label="never froze, or no hole (at its last step)")
    if last > 0:
        ax.axhline(last, color="0.6", ls=":", lw=1)
    ax.set_title("From which step the hole freezes")
    ax.set_ylabel("freeze step")
    ax.set_ylim(0, max(1, last) * 1.1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _dodge(ax, x: np.ndarray, i: int, n: int) -> np.ndarray:
    """Curve ``i`` of ``n`` shifted a little sideways (±0.03 decade apart), so equal points stay visible."""
    x = np.asarray(x, float)
    if n < 2 or ax.get_xscale() != "log":
        return x
    return x * 10 ** (0.03 * (i - (n - 1) / 2))


def _counts_axis(ax) -> None:
    """A y axis of counts: from 0, integer ticks, a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(True, alpha=0.3)


def step_sigmas(sigmas: list[float], k: int = STEP_SIGMAS) -> list[float]:
    """Up to ``k`` σ values spread over the grid, both ends included.

    >>> step_sigmas([0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], 3)
    [0, 0.0001, 0.1]
    """
    sigmas = sorted(set(sigmas))
    if len(sigmas) <= k:
        return sigmas
    picks = np.unique(np.round(np.linspace(0, len(sigmas) - 1, k)).astype(int))
    return [sigmas[i] for i in picks]


def _steps_figure(runs: list[dict], steps: dict):
    """Per-step holes and tokens in holes: one panel column per curve, one line per chosen σ."""
    import matplotlib.pyplot as plt
    from blackholes.render.plots import literal

    row_of = {run_id: i for i, run_id in enumerate(steps["runs"])}
    good = [r for r in runs if not r.get("error") and r.get("run") in row_of]
    if not good or "holes" not in steps:
        return None
    varying = varying_options(good)
    curves: dict[str, list[dict]] = {}
    for r in good:
        curves.setdefault(series_label(r, varying), []).append(r)
    labels = sorted(curves)[:4]
    fig, axes = plt.subplots(2, len(labels), figsize=(5.2 * len(labels) + 1, 6.4), sharex=True, squeeze=False)
    x = np.asarray(steps["steps"])
    for col, label in enumerate(labels):
        chosen = step_sigmas([float(r["options"].get("sigma", 0)) for r in curves[label]])
        for row, key in enumerate(("holes", "tokens_in_holes")):
            ax = axes[row, col]
            if key not in steps:
                continue
            for i, sigma in enumerate(chosen):
                ids = [row_of[r["run"]] for r in curves[label] if float(r["options"].get("sigma", 0)) == sigma]
                values = np.asarray(steps[key][ids], float)
                colour = COLOURS[i % len(COLOURS)]
                ax.plot(x, values.mean(axis=0), color=colour, lw=1.2,
                        label=f"σ = {fmt_sigma(sigma)} ({len(ids)} seeds)")
                if len(ids) > 1:
                    ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2, lw=0)
            _counts_axis(ax)
            ax.set_ylabel("holes" if key == "holes" else "tokens in holes")
            if row == 0:
                ax.set_title(literal(label))
                ax.legend(fontsize=8, loc="best")
            else:
                ax.set_xlabel("step")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- the coarsening sweep


def write_coarsening_report(out_dir: str | os.PathLike, data: dict) -> list[Path]:
    """``coarsening.md``, ``coarsening.html`` and their PNGs from a coarsening result's JSON."""
    out = Path(out_dir)
    plots = draw_coarsening_plots(out / "plots", data)
    doc = coarsening_document(out, data, plots)
    return _write_pages(doc, out, "coarsening") + list(plots.values())


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
                     f"{fmt_sigma(first['sigma'])}: {_range(first['tokens_in_holes'])} tokens in "
                     f"{_holes(first['holes'])}.")
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
                     f"{_range(best['distance'], '{:,.1f}')} tokens ({best['relative']:.0%} of the real hole tokens); "
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
    doc.table(header, [[fmt_sigma(r["sigma"]), _range(r.get("holes"), "{:,.1f}"),
                        _range(r.get("tokens_in_holes"), "{:,.1f}"), _range(r.get("largest"), "{:,.1f}"),
                        _range(r.get("max_ulps"), "{:,.1f}")]
                       + ([_range(r.get("distance"), "{:,.1f}")] if target else [])
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
            _band(ax, x(sigmas), [r.get(key) for r in rows], colour, label, bars=False, sigmas=sigmas)
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
    _band(ax, x(sigmas), [r.get("max_ulps") for r in rows], COLOURS[0], "widest row (L∞ from the centre)", bars=False,
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
    _band(left, x(sigmas), [r.get("distance") for r in rows], COLOURS[0], "distance (mean over seeds)", bars=False,
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
