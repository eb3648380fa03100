"""``blackholes sweep``: many training runs from one grid of train options, batched (or, with
``--no-train``, the coarsening sweep of :mod:`blackholes.pipelines.coarsening`).

Parsing and calling only; the work is :func:`blackholes.pipelines.sweep.sweep`. Every
``train`` option is declared here as a grid: a value, a comma list, or a range.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["--sigma", "log:1e-6:1e-1:25", "--seeds", "0-7", "--out", "s"])
>>> args.sigma, args.seed, args.record
('log:1e-6:1e-1:25', '0-7', 'none')
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from blackholes.cli.common import kept_rows, log_line
from blackholes.errors import BlackholesError

GRID_HELP = "a value, a comma list, or ranges: A-B (integers), log:START:STOP:N, lin:START:STOP:N"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        help="train many runs from one grid of options (batched, locally or on Dask), with a census of every step",
        description=(
            "Train every combination of the train options given as lists or ranges (e.g. --sigma 0,1e-4,1e-3 "
            "--seeds 0-7 --precision bf16,bf16-mixed): each run is the run `blackholes train` makes with the "
            "options its row records. Runs of one shape and precision are trained together as one stacked model. "
            "Writes DIR/runs.jsonl (one row per finished run), DIR/steps.safetensors (loss and the exact group "
            "census of every run at every step), DIR/sweep.json (the grid) and the phase diagrams "
            "(DIR/sweep.html). Re-running with the same --out and grid resumes; Ctrl-C keeps finished runs."
        ),
    )
    p.add_argument("--out", metavar="DIR", required=True, help="the sweep folder (created if missing)")
    _add_train_grid(p)
    g = p.add_argument_group("sweep")
    add_option_arguments(g)
    g.add_argument("--no-compile", action="store_true",
                   help="the older spelling of --numerics eager (a run compiles only when its --numerics is compiled: "
                        "compiling changes the rounding, so the sweep never chooses it for speed)")
    g.add_argument("--quiet", action="store_true", help="print only the report's location (and errors)")
    try:  # the coarsening sweep's own options (--no-train, --centre, ...), after ours
        from blackholes.pipelines.coarsening import add_coarsening_arguments
    except ImportError:
        p.add_argument("--no-train", action="store_true", help="no training: the coarsening sweep")
    else:
        add_coarsening_arguments(p)
    return p


def _add_train_grid(p: argparse.ArgumentParser) -> None:
    """One option per ``TrainConfig`` field, taking a grid (a recording or execution setting: one value)."""
    from blackholes.pipelines.sweep import SWEEPABLE
    from blackholes.training.config import TrainConfig

    titles = {"recording": "recording (of the --record runs; one value each)", "execution": "execution (one value each)"}
    groups = {name: p.add_argument_group(titles.get(name, f"train options ({name}): {GRID_HELP}"))
              for name in ("run", "model", "optimizer", "recording", "execution")}
    for f in dataclasses.fields(TrainConfig):
        cli = f.metadata.get("cli")
        if cli is None or f.name == "compile":
            continue
        group = groups[cli["group"]]
        shown = cli.get("shown", f.default)
        if isinstance(f.default, bool):  # --no-optimizer-state
            group.add_argument(*cli["flags"], dest=f.name, action="store_const", const=not f.default, default=None,
                               help=f"{cli['help']} (default: {shown})")
            continue
        flags = {"seed": ("--seed", "--seeds"), "precision": ("--precision",)}.get(f.name, (f"--{f.name.replace('_', '-')}",))
        one = "" if f.name in SWEEPABLE else "; one value"
        group.add_argument(*flags, dest=f.name, default=None, metavar="VALUES" if one == "" else cli.get("metavar"),
                           help=f"{cli['help']} (default: {shown}{one})")
    groups["run"].add_argument("--dtype", dest="dtype", default=None, metavar="VALUES",
                               help="the older name of --precision (with --no-train: the grid rows are rounded to)")


def run(args) -> int:
    if getattr(args, "no_train", False):
        from blackholes.pipelines.coarsening import run_coarsening

        return run_coarsening(args)
    from blackholes.pipelines.sweep import FIXED_ONLY, SWEEPABLE, SweepOptions, sweep

    options = {name: getattr(args, name) for name in (*SWEEPABLE, *FIXED_ONLY) if getattr(args, name, None) is not None}
    if args.dtype is not None:
        if "precision" in options and options["precision"] != args.dtype:
            raise BlackholesError(f"--dtype {args.dtype} and --precision {options['precision']} disagree; give one")
        options["precision"] = args.dtype
    own = {f.name: getattr(args, f.name) for f in dataclasses.fields(SweepOptions) if "cli" in f.metadata}
    if own["scheduler"] is None:  # else $DASK_SCHEDULER_ADDRESS, unless --workers asks for the local pool
        own["scheduler"] = (os.environ.get("DASK_SCHEDULER_ADDRESS") if args.workers is None else None) or "local"
    result = sweep(
        args.out, compile="never" if args.no_compile else "auto",
        confirm=_ask if sys.stdin.isatty() and not args.quiet else None,
        progress=not args.quiet, log=None if args.quiet else log_line, **own, **options,
    )
    if result.interrupted:  # the one stop line: cli/main.py
        from blackholes.errors import Stopped

        raise Stopped(result.stopped_by, kept=kept_rows(Path(result.out) / "runs.jsonl"))
    if not args.quiet:
        print(result.summary())
        print(f"Sweep: {len(result.runs):,} runs ({result.trained:,} trained, {result.skipped:,} already done, "
              f"{result.failed:,} failed) in {result.seconds:.1f} s")
    return _report(result)


def add_option_arguments(g) -> None:
    """One option per ``SweepOptions`` field that has a ``cli`` entry, its default and help from there."""
    from blackholes.pipelines.sweep import SweepOptions

    for f in dataclasses.fields(SweepOptions):
        cli = f.metadata.get("cli")
        if cli is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            g.add_argument(flag, action="store_true", help=cli["help"])
            continue
        extra = {k: cli[k] for k in ("metavar", "type") if k in cli}
        shown = "" if f.default is None else f" (default: {f.default})"
        g.add_argument(flag, default=f.default, help=cli["help"] + shown, **extra)


def _report(result) -> int:
    """The phase diagrams (render/sweep.py), when that module is installed."""
    try:
        from blackholes.render.sweep import write_sweep_report
    except ImportError:
        print(f"Results: {result.out}/runs.jsonl, {result.out}/steps.safetensors")
        return 0
    paths = write_sweep_report(result.out)
    page = next((p for p in paths if str(p).endswith(".html")), None)
    print(f"Report: {page}  (also sweep.md, runs.jsonl, steps.safetensors; all files in {result.out}/)")
    return 0


def _ask(runs: int) -> bool:
    print(f"The grid has {runs:,} runs. Train them all? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        return False

