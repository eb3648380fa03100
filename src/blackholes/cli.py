"""The ``blackholes`` command: a thin layer over the Python API.

Each subcommand has two small functions here: ``_add_<name>(subparsers)`` declares
its arguments (and returns its parser) and ``_run_<name>(args)`` calls the API;
both are listed in ``COMMANDS``. Heavy modules (torch,
matplotlib) are imported inside the ``_run_*`` functions only, so ``blackholes
scan`` starts in a fraction of a second.

Bad input raises :class:`~blackholes.errors.BlackholesError` anywhere below; it is
printed here as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import BlackholesError


# ---------------------------------------------------------------------------- scan


def _add_scan(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "scan",
        help="find black-hole tokens (bit-identical embedding rows) in a model",
        description=(
            "Find groups of tokens whose embedding vectors are bit-for-bit identical. "
            "SOURCE is a .safetensors file, a Hugging Face model directory, or a model id "
            "in the local Hugging Face cache (offline)."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="file.safetensors | model directory | org/model id")
    p.add_argument("--key", help="tensor name inside the safetensors file(s)")
    p.add_argument(
        "--matrix",
        choices=("input", "output"),
        help="for model directories: the input embedding or the output (lm_head) matrix "
        "(default: output, which is the input embedding when tied)",
    )
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json for decoding (default: beside the model)")
    p.add_argument("--mask", metavar="PATH", help="write mask, black_hole_id and group vectors (safetensors)")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--top", type=int, default=10, metavar="N", help="largest groups to print (default 10)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _run_scan(args) -> int:
    from .scan import scan

    result = scan(args.source, key=args.key, matrix=args.matrix, tokenizer=args.tokenizer)
    if args.mask:
        result.save_mask(args.mask)
    if args.json:
        from .fileio import write_json

        write_json(args.json, result.to_json())
    if not args.quiet:
        print(result.summary(top=args.top))
        if args.mask:
            print(f"Mask written to {args.mask}")
        if args.json:
            print(f"Report written to {args.json}")
    return 0


# ---------------------------------------------------------------------------- main

COMMANDS = [
    (_add_scan, _run_scan),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blackholes",
        description="Find and study black-hole tokens: embedding rows that are bit-for-bit identical.",
    )
    parser.add_argument("--version", action="version", version=f"blackholes {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, run in COMMANDS:
        add(sub).set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except BlackholesError as e:
        print(f"blackholes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blackholes: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:  # disk full, permission denied, ...: the OS's words, one line
        name = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"blackholes: error: {e.strerror or e}{name}", file=sys.stderr)
        return 2
