"""``blackholes export``: a scan's dead tokens as the masks generation engines read.

Parsing and calling only; the work is :func:`blackholes.pipelines.export.export`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["scan.json", "--to", "vllm", "--out", "bias.json"])
>>> args.to, args.tokens, args.keep
('vllm', 'holes', [])
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from blackholes.pipelines.export import FORMATS  # no heavy imports: the module names them

    p = subparsers.add_parser(
        "export",
        help="write a scan's dead tokens as a mask for transformers, vLLM or llama.cpp",
        description=(
            "Read a scan JSON (`blackholes scan --json`) and write the tokens it names in a generation "
            "engine's own format: transformers (generation_config.json with suppress_tokens), vllm "
            "({\"logit_bias\": {ID: -100}}), llama.cpp (--logit-bias ID-inf arguments, and llama-server's "
            "logit_bias JSON beside them as NAME.server.json) or ids (a JSON list). Special tokens a chat "
            "template needs (end of text or turn, begin of text, padding) are kept unless named by id."
        ),
    )
    p.add_argument("scan", metavar="SCAN.json", help="a scan JSON (blackholes scan --json)")
    p.add_argument("--to", choices=FORMATS, required=True, help="the consumer's format")
    p.add_argument("--out", metavar="FILE", required=True, help="where to write it")
    p.add_argument("--tokens", default="holes", metavar="SET",
                   help="holes, verified (needs a scan --verify), candidates (needs --indicators) or ids "
                        "such as 5,7-9; combine with commas, e.g. holes,verified (default: holes)")
    p.add_argument("--base", metavar="generation_config.json",
                   help="--to transformers: merge into a copy of this generation config")
    p.add_argument("--keep", nargs="+", default=[], metavar="NAME",
                   help="tokens (ids or texts) to keep out of the mask, beyond the chat-template tokens")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def run(args) -> int:
    from blackholes.pipelines.export import export

    result = export(args.scan, to=args.to, out=args.out, tokens=args.tokens, base=args.base, keep=args.keep)
    if not args.quiet:
        sets = ", ".join(f"{name} {n:,}" for name, n in result.sets.items())
        print(f"Suppressed {len(result.tokens):,} tokens ({sets})")
        for i, why in sorted(result.kept.items()):
            print(f"  kept {i}: {why}")
        for note in result.notes:
            print(f"Note: {note}")
        print("Written: " + ", ".join(str(p) for p in result.files))
    return 0
