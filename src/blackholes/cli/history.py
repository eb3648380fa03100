"""``blackholes history``: the life of dead tokens across a model's checkpoints.

Parsing and calling only; the work is :func:`blackholes.pipelines.history.history`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["org/name", "--revisions", "step0-step3000:1000", "--out", "h"])
>>> args.sources, args.revisions, args.matrix
(['org/name'], 'step0-step3000:1000', None)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blackholes import defaults
from blackholes.cli.common import kept_rows, log_line
from blackholes.errors import BlackholesError, Stopped


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "history",
        help="follow the holes across a model's checkpoints: when they form, split, merge and freeze",
        description=(
            "Read the embedding matrix of every checkpoint of a series (only the matrix's bytes: by range for "
            "remote sources), group its rows bit for bit, and follow the holes from checkpoint to checkpoint: "
            "per checkpoint the distinct rows, holes, tokens in holes, the largest hole and the hole sizes; "
            "between checkpoints every fission, merger, resize and token joining or leaving the dead set; per "
            "token the last checkpoint its row changed; when each hole and the dead set froze. Writes "
            "DIR/history.json, history.md, history.html and plots; rows go to DIR/history.jsonl as each "
            "checkpoint finishes, so running the same command again resumes."
        ),
    )
    p.add_argument("sources", metavar="SOURCE", nargs="+",
                   help="a folder of checkpoint-N / step-N / stepN folders | a training recording | "
                        "org/name or hf://org/name with --revisions | several sources (anything scan takes), "
                        "in order")
    p.add_argument("--out", metavar="DIR", required=True, help="the history folder (created if missing)")
    p.add_argument("--json", metavar="FILE", help="also write history.json here")
    p.add_argument("--revisions", metavar="LIST",
                   help="revisions of one model: a comma list of names, ranges like step0-step143000:1000, "
                        "globs over its refs like 'step*'")
    p.add_argument("--matrix", choices=("input", "output", "both"),
                   help="the input embedding, the output matrix, or both (default: scan's choice: the output "
                        "matrix, the input one when tied)")
    p.add_argument("--near", type=int, nargs="?", const=defaults.NEAR_ULPS, metavar="K",
                   help=f"also the halo size per checkpoint: rows within K ULPs of a hole (K = {defaults.NEAR_ULPS} when bare)")
    p.add_argument("--workers", type=int, metavar="N", help="local processes (default: the cores)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the checkpoints on a Dask cluster, e.g. tcp://HOST:8786 "
                        "(default: $DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--redo", action="store_true", help="read again the checkpoints DIR already has")
    p.add_argument("--quiet", action="store_true", help="print only where the page is (and errors)")
    return p


def run(args) -> int:
    from blackholes.pipelines.history import history

    if args.workers is not None and args.workers < 1:
        raise BlackholesError(f"--workers must be at least 1, got {args.workers}")
    scheduler = args.scheduler  # None: $DASK_SCHEDULER_ADDRESS when set (and no --workers), else local
    try:
        result = history(args.sources, out=args.out, revisions=args.revisions, matrix=args.matrix, near=args.near,
                         workers=args.workers, scheduler=scheduler, redo=args.redo, json_path=args.json,
                         progress="checkpoints" if not args.quiet and sys.stderr.isatty() else None, log=log_line)
    except Stopped as e:  # the runner kept every finished checkpoint's row; the one stop line: cli/main.py
        raise Stopped(e.signal_name, kept=kept_rows(Path(args.out) / "history.jsonl")) from None
    if not args.quiet:
        from blackholes.render.history import headline

        good = result.good()
        print(f"History of {len(good):,} checkpoint matrices ({result.read:,} read now, "
              f"{result.bytes_read:,} bytes) in {result.seconds:.1f} s")
        for matrix, section in result.matrices.items():
            for line in headline(section, result.events, matrix):
                print(f"  {matrix}: {line.replace('**', '')}")
    print(f"Page: {result.out / 'history.html'}  (also history.md, history.json; all files in {result.out}/)")
    return 0

