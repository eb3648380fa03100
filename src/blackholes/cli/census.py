"""``blackholes census``: scan many models at once, on a local process pool or a Dask cluster.

Parsing and calling only; the work is :func:`blackholes.pipelines.census.census`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["org/a", "org/b", "--out", "census", "--workers", "2"])
>>> args.sources, args.matrix, args.workers
(['org/a', 'org/b'], 'both', 2)
"""

from __future__ import annotations

import argparse
import os
import sys

from blackholes.errors import BlackholesError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "census",
        help="scan many models at once (locally or on a Dask cluster) into one table and summary",
        description=(
            "Scan every SOURCE (anything `blackholes scan` accepts) for black-hole tokens and collect one row "
            "per model matrix in DIR/census.jsonl (appended as each model finishes), each model's scan JSON in "
            "DIR/models/, and a summary in DIR/census.md and DIR/census.html. Re-running with the same --out "
            "skips the models already there. A model that fails is a row with its error, never the end."
        ),
    )
    p.add_argument("sources", metavar="SOURCE", nargs="*",
                   help="file.safetensors | model directory | org/name[@revision] | ollama:NAME[:TAG] | URL")
    p.add_argument("--out", metavar="DIR", required=True, help="the census folder (created if missing)")
    g = p.add_argument_group("which models")
    g.add_argument("--from-file", metavar="LIST", help="more sources, one a line (# comments)")
    g.add_argument("--hf-cache", action="store_true", help="every model in the local Hugging Face cache")
    g.add_argument("--ollama", action="store_true", help="every model in the local Ollama store")
    g.add_argument("--matrix", choices=("input", "output", "both"), default="both",
                   help="the input embedding, the output matrix, or both where untied (default: both)")
    g = p.add_argument_group("analysis (as scan)")
    g.add_argument("--near", type=int, nargs="?", const=8, metavar="K",
                   help="near-duplicate clusters within K ULPs (K = 8 when given bare)")
    g.add_argument("--indicators", action="store_true", help="under-trained token indicators and candidates")
    g.add_argument("--masks", action="store_true", help="also write each model's mask to DIR/models/")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, metavar="N",
                   help="local processes (default: the cores; fewer when the models would not fit in memory)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster, e.g. tcp://HOST:8786 (default: $DASK_SCHEDULER_ADDRESS)")
    g.add_argument("--redo", action="store_true", help="scan again the models DIR already has")
    g.add_argument("--quiet", action="store_true", help="print only the summary's location (and errors)")
    from blackholes.cli.scan import value_may_precede_source

    value_may_precede_source(p, "--near")  # `census --near model.safetensors --out DIR`
    return p


def run(args) -> int:
    from blackholes.pipelines.census import census

    if args.workers is not None and args.workers < 1:
        raise BlackholesError(f"--workers must be at least 1, got {args.workers}")
    scheduler = args.scheduler  # else $DASK_SCHEDULER_ADDRESS, unless --workers asks for the local pool
    if scheduler is None:
        scheduler = (os.environ.get("DASK_SCHEDULER_ADDRESS") if args.workers is None else None) or "local"
    result = census(
        args.sources, out=args.out, from_file=args.from_file, hf_cache=args.hf_cache, ollama=args.ollama,
        matrix=args.matrix, near=args.near, indicators=args.indicators, masks=args.masks, workers=args.workers,
        scheduler=scheduler, redo=args.redo, log=None if args.quiet else _stderr,
    )
    if result.interrupted:
        print(f"blackholes: interrupted: {result.scanned:,} rows kept in {result.out}/census.jsonl; run the same "
              "command again to go on", file=sys.stderr)
        return 130
    if not args.quiet:
        from blackholes.pipelines.census import human_bytes

        print(f"Census: {len(result.rows):,} model matrices ({result.scanned:,} scanned, {result.skipped:,} already "
              f"done, {result.failed:,} failed); {human_bytes(result.bytes_read)} read in {result.seconds:.1f} s")
    md, page = result.summary
    print(f"Summary: {page}  (also {md.name}, census.jsonl; all files in {result.out}/)")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
