"""``blackholes verify``: ask the model whether it can produce each token (Land & Bartolo 2024, "Fishing for
Magikarp"), many tokens per forward pass. Parsing and calling only; the work is :func:`blackholes.verify.verify`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["model_dir", "--tokens", "5-9,12", "--json", "v.json"])
>>> args.tokens, args.method, args.device, store_path(args)
('5-9,12', 'magikarp', 'auto', 'v.jsonl')
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blackholes.errors import BlackholesError

WHICH = ("candidates", "holes")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "verify",
        help="confirm under-trained tokens with the model itself (magikarp's prompts, batched)",
        description=(
            "Load the whole model (a Hugging Face folder or cached id, sharded safetensors, a GGUF file, "
            "ollama:NAME or hf://org/name) and test whether it can produce each token: three prompts built around "
            "a placeholder whose id is replaced by the token's, greedy continuation for 3 tokens, the token's "
            "highest probability as the score (Land & Bartolo 2024, 'Fishing for Magikarp'). Verdicts: "
            "strong_rejected > 0.9 > weak_rejected > 0.1 > weak_verified > 0.001 > strong_verified; 'verified' "
            "counts tokens below 0.01. Verdicts are appended to a .jsonl as they come: run again to go on."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="model folder | org/name (cached) | model.gguf | "
                   "ollama:NAME[:TAG] | hf://org/name[@revision]")
    g = p.add_argument_group("which tokens (one of)")
    x = g.add_mutually_exclusive_group(required=True)
    x.add_argument("--tokens", metavar="IDS", help="token ids, e.g. '5,9,100-120'")
    x.add_argument("--from", dest="from_scan", metavar="SCAN.json",
                   help="the candidates and hole members of a `blackholes scan --json` report")
    x.add_argument("--all", action="store_true", help="every token of the model (small vocabularies)")
    g.add_argument("--which", default="candidates,holes", metavar="LIST",
                   help="with --from: candidates, holes or both (default candidates,holes)")
    add_engine_arguments(p)
    p.add_argument("--json", metavar="PATH", help="write the verification section as JSON ('-': standard output)")
    p.add_argument("--jsonl", metavar="PATH", help="the verdicts, appended as they come; a second run skips those "
                   "already there (default: beside --json, PATH.jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--method, --device, --dtype, --batch-size: how verification runs (shared with scan --verify)."""
    g = p.add_argument_group("verification")
    g.add_argument("--method", choices=("magikarp",), default="magikarp", help="the verification method")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="where the model runs (default auto)")
    g.add_argument("--dtype", metavar="NAME", help="float32 (default: magikarp's answers), bfloat16 or float16")
    g.add_argument("--batch-size", type=int, default=16, metavar="N", help="tokens per forward pass (default %(default)s)")


def store_path(args) -> str | None:
    if args.jsonl:
        return args.jsonl
    if args.json and args.json != "-":
        path = Path(args.json)
        return str(path.with_suffix(".jsonl") if path.suffix == ".json" else path.with_name(path.name + ".jsonl"))
    return None


def tokens_from_scan(path: str, which: str = "candidates,holes") -> list[int]:
    """The candidates and/or hole members listed in a scan report (one matrix, or both of ``--matrix both``)."""
    from blackholes.io.untrusted import parse_json

    kinds = [w.strip() for w in which.split(",") if w.strip()]
    if not kinds or any(k not in WHICH for k in kinds):
        raise BlackholesError(f"--which takes candidates, holes or both (comma-separated), not {which!r}")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    doc = parse_json(data, what=Path(path).name)
    reports = list(doc["matrices"].values()) if isinstance(doc, dict) and isinstance(doc.get("matrices"), dict) \
        else [doc]
    ids = set()
    for r in reports:
        if not isinstance(r, dict) or "groups" not in r:
            raise BlackholesError(f"{path} is not a `blackholes scan --json` report")
        if "holes" in kinds:
            ids.update(int(t) for g in r["groups"] for t in g.get("token_ids", []))
        if "candidates" in kinds:
            ind = r.get("indicators")
            if ind is None and kinds == ["candidates"]:
                raise BlackholesError(f"{path} has no candidates: scan it with --indicators")
            ids.update(int(c["id"]) for c in (ind or {}).get("candidates", []))
    return sorted(ids)


def run(args) -> int:
    from blackholes.errors import Stopped
    from blackholes.io.paths import check_outputs
    from blackholes.verify import verify

    quiet = args.quiet or args.json == "-"
    store = store_path(args)
    check_outputs([args.json, store], inputs=(args.source, args.from_scan))
    if args.tokens is not None:
        from blackholes.analysis.ids import parse_tokens

        tokens = parse_tokens(args.tokens)
    elif args.from_scan:
        tokens = tokens_from_scan(args.from_scan, args.which)
    else:
        tokens = "all"
    result = verify(args.source, tokens, method=args.method, device=args.device, dtype=args.dtype,
                    batch_size=args.batch_size, store=_store(store), progress=not quiet)
    if args.json:
        write_verification(args.json, result)
    if not quiet:
        print(result.summary())
        if args.json:
            print(f"Verification written to {args.json}" + (f" (verdicts as they came: {store})" if store else ""))
    if not result.complete:  # the signal that stopped it is the CLI's to name (cli/main.py: stop_line)
        raise Stopped(kept=f"{len(result.tokens):,} verdicts kept"
                      + (f" in {store}; run the same command again to go on" if store else ""))
    return 0


def _store(path):
    if path is None:
        return None
    from blackholes.io.jsonl import JsonlStore

    return JsonlStore(path)


def write_verification(path: str, result) -> None:
    """``{"verification": ...}`` to ``path`` (atomically), or to standard output for '-'."""
    doc = {"verification": result.to_json()}
    if path == "-":
        import json

        from blackholes.io.jsonl import clean

        print(json.dumps(clean(doc), indent=1, ensure_ascii=False))
        return
    from blackholes.io.atomic import write_json

    write_json(path, doc)
