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
import dataclasses
import os
from pathlib import Path

from blackholes.cli.common import kept_rows, log_line
from blackholes.errors import Stopped


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
    groups = {name: p.add_argument_group(name) for name in ("which models", "analysis (as scan)", "execution")}
    g = groups["which models"]
    g.add_argument("--from-file", metavar="LIST", help="more sources, one a line (# comments)")
    g.add_argument("--hf-cache", action="store_true", help="every model in the local Hugging Face cache")
    g.add_argument("--ollama", action="store_true", help="every model in the local Ollama store")
    add_option_arguments(groups)
    groups["execution"].add_argument("--quiet", action="store_true", help="print only the summary's location (and errors)")
    from blackholes.cli.scan import value_may_precede_source

    value_may_precede_source(p, "--near")  # `census --near model.safetensors --out DIR`
    return p


def add_option_arguments(groups: dict) -> None:
    """One option per ``CensusOptions`` field that has a ``cli`` entry, its default and help from there."""
    from blackholes.pipelines.census import CensusOptions

    for f in dataclasses.fields(CensusOptions):
        cli = f.metadata.get("cli")
        if cli is None:
            continue
        flag, g = "--" + f.name.replace("_", "-"), groups[cli["group"]]
        if isinstance(f.default, bool):
            g.add_argument(flag, action="store_true", help=cli["help"])
            continue
        extra = {k: cli[k] for k in ("metavar", "nargs", "const", "type", "choices") if k in cli}
        shown = "" if f.default is None else f" (default: {f.default})"
        g.add_argument(flag, default=f.default, help=cli["help"].format(const=cli.get("const")) + shown, **extra)


def run(args) -> int:
    from blackholes.pipelines.census import CensusOptions, census

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(CensusOptions) if "cli" in f.metadata}
    if options["scheduler"] is None:  # else $DASK_SCHEDULER_ADDRESS, unless --workers asks for the local pool
        options["scheduler"] = (os.environ.get("DASK_SCHEDULER_ADDRESS") if args.workers is None else None) or "local"
    result = census(args.sources, out=args.out, from_file=args.from_file, hf_cache=args.hf_cache,
                    ollama=args.ollama, log=None if args.quiet else log_line, **options)
    if result.interrupted:  # the one stop line: cli/main.py
        raise Stopped(result.stopped_by, kept=kept_rows(Path(result.out) / "census.jsonl"))
    if not args.quiet:
        from blackholes.pipelines.census import human_bytes

        print(f"Census: {len(result.rows):,} model matrices ({result.scanned:,} scanned, {result.skipped:,} already "
              f"done, {result.failed:,} failed); {human_bytes(result.bytes_read)} read in {result.seconds:.1f} s")
    md, page = result.summary
    print(f"Summary: {page}  (also {md.name}, census.jsonl; all files in {result.out}/)")
    return 0

