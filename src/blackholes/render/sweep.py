"""The sweep's pages: phase diagrams of the training sweep, and the coarsening sweep's fit.

``write_sweep_report(DIR)`` reads what ``blackholes sweep`` left in DIR and writes:

* from ``runs.jsonl`` (one finished run a line) and ``steps.safetensors`` (per-step
  counts ``[runs, steps + 1]``): ``sweep.md``, ``sweep.html`` and ``plots/sweep_final.png``
  (final tokens in holes and number of holes against σ: one curve per precision and numerics —
  and per any other option that varies —, the mean over seeds with min–max bars),
  ``plots/sweep_freeze.png`` (the step the hole freezes from, against σ) and
  ``plots/sweep_steps.png`` (holes and tokens in holes at every step, for a few σ);
* from ``coarsening.json`` (``blackholes sweep --no-train``): ``coarsening.md``,
  ``coarsening.html`` and ``plots/coarsening_*.png``.

σ axes are logarithmic; σ = 0 gets its own place one decade left of the smallest σ, ticked "0".

>>> paths = write_sweep_report("sweep_dir")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.atomic import write_text
from blackholes.render.coarsening import write_coarsening_report
from blackholes.render.page import Document
from blackholes.render.sweep_parts import COLOURS, band, fmt_sigma, holes_text, range_text, sigma_axis, write_pages

SWEEP_PLOTS = {
    "final": ("sweep_final.png", "Where the run ends: tokens in holes (left) and number of holes (right) against "
                                 "the initial spread σ; one curve per precision and numerics, the mean over seeds, "
                                 "bars from the smallest to the largest seed."),
    "freeze": ("sweep_freeze.png", "The step the hole freezes from (no bit of it changes again) against σ; mean over "
                                   "the seeds that froze, bars min–max; × marks a run whose hole never froze (or "
                                   "that had no hole), drawn at its last step."),
    "steps": ("sweep_steps.png", "Holes (top) and tokens in holes (bottom) at every recorded step, for a few σ; "
                                 "the mean over seeds, shaded min–max."),
}
STEP_SIGMAS = 4  # σ values drawn step by step



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
        written += write_pages(doc, out, "sweep") + list(plots.values())
    if coarse_file.is_file():
        written += write_coarsening_report(out, read_coarsening(coarse_file))
    return written


# ---------------------------------------------------------------------------- reading DIR


def read_runs(path: str | os.PathLike) -> tuple[list[dict], int]:
    """``(runs, skipped)``: the JSON objects of ``runs.jsonl``, and how many lines were unreadable
    (a run killed while writing its line leaves a partial last line).

    >>> _ = Path("runs.jsonl").write_text('{"run": 0, "options": {"sigma": 0}}\\n{"run": 1, "opt')
    >>> [r["run"] for r in read_runs("runs.jsonl")[0]], read_runs("runs.jsonl")[1]
    ([0], 1)
    """
    from blackholes.io.jsonl import JsonlStore

    store = JsonlStore(path)  # the one reader of result rows: one rule for a torn last line
    runs, skipped = [], int(store.torn())
    for _, row in store.numbered():
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
    """A run's curve: its precision and numerics, plus every other option that varies across the sweep.

    >>> series_label({"options": {"precision": "bf16", "init": "unit", "sigma": 0, "numerics": "eager"}}, ["init"])
    'bf16, eager numerics, init=unit'
    """
    o = run["options"]
    parts = [str(o.get("precision", "?")), f"{run_numerics(run)} numerics"] + [f"{k}={o.get(k)}" for k in varying]
    return ", ".join(parts)


def run_numerics(run: dict) -> str:
    """A row's numerics: its ``numerics`` option, else (a row written before numerics were part of the
    recipe) what its ``compiled`` field says.

    >>> run_numerics({"options": {"numerics": "compiled"}}), run_numerics({"options": {}, "compiled": False})
    ('compiled', 'eager')
    """
    return run["options"].get("numerics") or ("compiled" if run.get("compiled") else "eager")


def numerics_words(runs: list[dict]) -> str | None:
    """Whether the rounding path moves the freeze step and the surviving holes: runs that differ only in
    their numerics, compared pair by pair (None when the sweep has no such pair).

    >>> a = {"options": {"sigma": 0, "numerics": "eager"}, "freeze_step": 5, "final": {"holes": 1}}
    >>> numerics_words([a, {**a, "options": {"sigma": 0, "numerics": "compiled"}, "freeze_step": 7}])[:62]
    '1 run(s) trained with both numerics: 0 freeze at the same step'
    """
    pairs: dict[str, dict[str, dict]] = {}
    for r in runs:
        if r.get("error"):
            continue
        recipe = {k: v for k, v in r["options"].items() if k not in ("numerics", "compile")}
        pairs.setdefault(json.dumps(recipe, sort_keys=True), {})[run_numerics(r)] = r
    both = [p for p in pairs.values() if {"eager", "compiled"} <= set(p)]
    if not both:
        return None
    freeze = sum(p["eager"].get("freeze_step") == p["compiled"].get("freeze_step") for p in both)
    holes = sum((p["eager"].get("final") or {}).get("holes") == (p["compiled"].get("final") or {}).get("holes")
                for p in both)
    verdict = ("the freeze and the holes are properties of the recipe here" if freeze == holes == len(both)
               else "the rounding path moves them: they are not the recipe's alone")
    return (f"{len(both):,} run(s) trained with both numerics: {freeze:,} freeze at the same step and {holes:,} end "
            f"with the same number of holes under eager and compiled numerics — {verdict}.")


def varying_options(runs: list[dict]) -> list[str]:
    """Options (other than σ, seed and precision) that differ between runs, sorted.

    >>> varying_options([{"options": {"sigma": 0, "lr": 1}}, {"options": {"sigma": 1, "lr": 2}}])
    ['lr']
    """
    keys = sorted({k for r in runs for k in r["options"]} - {"sigma", "seed", "precision", "numerics", "compile"})
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
    >>> rows["bf16, eager numerics"][0]["holes"]
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
    rounding = numerics_words(runs)
    if rounding:
        doc.para("**Numerics.** " + rounding)
    for label, rows in table.items():
        doc.heading(f"{label}")
        doc.table(["σ", "seeds", "holes", "tokens in holes", "largest hole", "freezes from step", "final loss", "s"],
                  [[fmt_sigma(r["sigma"]), str(r["seeds"]), range_text(r["holes"]), range_text(r["tokens_in_holes"]),
                    range_text(r["largest"]), _freeze_cell(r), range_text(r["loss"], "{:.3f}"), range_text(r["seconds"], "{:.1f}")]
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
        parts.append(f"at σ = 0 the runs end with {range_text(zero['tokens_in_holes'])} tokens in "
                     f"{holes_text(zero['holes'])};")
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
    cell = range_text(row["freeze"])
    return cell + (f" ({row['never_froze']} never)" if row["never_froze"] else "")


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
            band(ax, at, [r[key] for r in rows], COLOURS[i % len(COLOURS)],
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
        band(ax, at, [r["freeze"] for r in rows], colour, literal(label), bars=True,
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


