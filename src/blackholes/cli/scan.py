"""``blackholes scan``: find the black holes (and, on request, their halos, the candidates, a report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from blackholes import defaults
from blackholes.errors import BlackholesError

SOURCE_HELP = ("file.safetensors | model directory | org/name[@revision] in the local Hugging Face cache | "
               "model.gguf | ollama:NAME[:TAG] | https://.../model.safetensors | hf://org/name[@revision]")


def add_source_arguments(p: argparse.ArgumentParser, *, both: bool = False) -> None:
    """SOURCE, --key and --matrix: how scan and map name one matrix (see sources.load_matrix)."""
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("--key", help="tensor name inside the model's file(s)")
    p.add_argument(
        "--matrix",
        choices=("input", "output", "both") if both else ("input", "output"),
        help="the input embedding or the output (lm_head) matrix (default: output, which is the input "
        "embedding when tied)" + ("; both: each of an untied model's two matrices" if both else ""),
    )
    p.add_argument("--cache", metavar="DIR", help="remote sources: keep the fetched tensor bytes here for next time")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "scan",
        help="find black-hole tokens (bit-identical embedding rows) in a model",
        description=(
            "Find groups of tokens whose embedding vectors are bit-for-bit identical. SOURCE is a "
            ".safetensors file, a Hugging Face model directory, a model id in the local Hugging Face cache "
            "(offline), a GGUF file, an Ollama model in the local store, or a remote safetensors file or "
            "model (only the header and the one matrix's bytes are fetched). With --near, --indicators and "
            "a tokenizer it also finds the halo around each hole, the further under-trained candidates and "
            "who the dead tokens are."
        ),
    )
    add_source_arguments(p, both=True)
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json for decoding (default: beside the model)")
    p.add_argument("--step", type=int, metavar="N",
                   help="for a training recording: the step whose embeddings to scan (default: the last)")
    p.add_argument("--near", type=int, nargs="?", const=defaults.NEAR_ULPS, metavar="K",
                   help="also find the rows within K ULPs of each other in every coordinate "
                   f"(default K: {defaults.NEAR_ULPS}): "
                   "the halo around each hole")
    p.add_argument("--indicators", action="store_true",
                   help="also compute the under-trained indicators (row norm; cosine distance to the dead rows' "
                   "mean after removing the first principal component) and list the candidates")
    p.add_argument("--reference", metavar="IDS",
                   help="with --indicators: the known-dead reference rows, e.g. '151643-151935' "
                   "(default: hole members, padding rows, unused/reserved tokens)")
    p.add_argument("--percentile", type=float, default=defaults.PERCENTILE, metavar="P",
                   help="with --indicators: candidates are the lowest P%% of the main indicator "
                   f"(default {defaults.PERCENTILE:g})")
    p.add_argument("--mask", metavar="PATH", help="write mask, black_hole_id and group vectors (safetensors)")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--report", metavar="DIR", help="write report.html and report.md (with plots) into DIR")
    p.add_argument("--top", type=int, default=10, metavar="N", help="largest groups to print (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--verify", action="store_true",
                   help="then verify the hole members and candidates with the model itself (as `blackholes verify`):"
                   " the JSON, mask and report gain the verdicts")
    from blackholes.cli.verify import add_engine_arguments  # argparse only: no torch

    add_engine_arguments(p)
    value_may_precede_source(p, "--near")
    return p


def value_may_precede_source(p: argparse.ArgumentParser, flag: str) -> None:
    """Let a flag whose value is optional stand right before SOURCE: ``scan --near model.safetensors``
    is ``--near`` with its default K and the path as SOURCE (argparse alone would take the path as K
    and answer with its usage text). A value that is an integer stays the flag's value."""
    parse = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        import sys

        args = list(sys.argv[1:] if args is None else args)
        for i in range(len(args) - 1):
            if args[i] == "--":
                break
            if args[i] == flag and not args[i + 1].startswith("-") and not _is_int(args[i + 1]):
                args[i : i + 2] = [args[i + 1], flag]
                break
        return parse(args, namespace)

    p.parse_known_args = parse_known_args


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def matrix_files(m) -> list:
    """What no output may overwrite: :meth:`Matrix.guarded_files <blackholes.sources.matrix.Matrix.guarded_files>`."""
    return m.guarded_files()


def options(args) -> dict:
    """The analysis options of scan, from the command line (shared with census)."""
    reference = None
    if getattr(args, "reference", None):
        from blackholes.analysis.ids import parse_tokens

        reference = parse_tokens(args.reference)
    if reference is not None and not args.indicators:
        raise BlackholesError("--reference is for --indicators; add --indicators")
    return {"near": args.near, "indicators": args.indicators, "reference": reference,
            "percentile": args.percentile}


def run(args) -> int:
    from blackholes.analysis.groups import scan, scan_both
    from blackholes.io.paths import check_outputs
    from blackholes.sources import load_matrix

    opts = options(args)
    if args.top < 0:
        raise BlackholesError(f"--top must be 0 or more, got {args.top}")
    args.quiet = args.quiet or args.json == "-"  # standard output is the JSON
    outputs = [args.mask, args.json, *_report_files(args.report)]
    check_outputs(outputs, inputs=(args.source, args.tokenizer))
    if args.verify:  # what verification would refuse, refused before the scan
        from blackholes.verify.model import dtype_name, locate, pick_device, require_transformers

        require_transformers()
        dtype_name(args.dtype, pick_device(args.device))
        if not args.source.startswith("hf://"):
            locate(args.source)
    if args.matrix == "both":
        if args.key or args.step is not None:
            raise BlackholesError("--matrix both picks both matrices itself: drop --key / --step")
        result = scan_both(args.source, tokenizer=args.tokenizer, cache=args.cache, progress=not args.quiet,
                           check=lambda m: check_outputs(outputs, inputs=matrix_files(m)), **opts)
    else:
        m = load_matrix(args.source, key=args.key, matrix=args.matrix, step=args.step, cache=args.cache,
                        progress=not args.quiet)
        check_outputs(outputs, inputs=matrix_files(m))
        result = scan(m, tokenizer=args.tokenizer, progress=not args.quiet, **opts)
    verification = _verify(result, args) if args.verify else None
    _write(result, args, verification)
    if not args.quiet:
        print(result.summary(top=args.top))
        if verification is not None:
            print()
            print(verification.summary())
        for path, what in ((args.mask, "Mask"), (args.json, "Report"), (args.report, "Page")):
            if path and path != "-":
                print(f"{what} written to {path}")
    return 0


def _report_files(folder) -> list:
    if not folder:
        return []
    from blackholes.render.model_report import report_paths

    return report_paths(folder) if Path(folder).exists() else []  # a new folder holds nothing to clash with


def _verify(result, args):
    """Verdicts for every hole member and candidate the scan found (of either matrix), by the model itself."""
    from blackholes.verify import verify

    ids = set()
    for r in getattr(result, "results", [result]):
        ids.update(t for g in r.groups for t in g.token_ids)
        ids.update(r.candidates)
    return verify(args.source, sorted(ids), method=args.method, device=args.device, dtype=args.dtype,
                  batch_size=args.batch_size, progress=not args.quiet)


def _write(result, args, verification=None) -> None:
    if verification is not None:
        result.verification = verification  # the report reads it from the result
    if args.mask:
        if verification is None:
            result.save_mask(args.mask)
        else:
            from blackholes.verify import mask_tensors

            rows = getattr(result, "input", result).shape[0]
            result.save_mask(args.mask, extra=mask_tensors(verification, rows))
    if args.json:
        from blackholes.io.atomic import write_json

        doc = result.to_json()
        if verification is not None:
            doc["verification"] = verification.to_json()
        write_json(args.json, doc)
    if args.report:
        from blackholes.render.model_report import write_report

        write_report(result, args.report)
