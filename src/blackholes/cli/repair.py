"""``blackholes repair``: a copy of the model with its dead rows rewritten, checked after.

Parsing and calling only; the work is :func:`blackholes.pipelines.repair.repair`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["org/tiny", "--out", "fixed", "--recipe", "mean-cov"])
>>> args.tokens, args.recipe, args.matrix, args.seed
('holes', 'mean-cov', 'both', 0)
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from blackholes.cli.scan import SOURCE_HELP
    from blackholes.pipelines.export import SETS

    p = subparsers.add_parser(
        "repair",
        help="write a copy of a model with the dead tokens' rows repaired (mean, mean-cov or zero), checked after",
        description=(
            "Copy SOURCE (safetensors file or folder, sharded or not; a GGUF file; an Ollama model, written as a "
            "new GGUF file) into the new folder --out, byte for byte, and overwrite only the rows of the chosen "
            "tokens: mean (the mean of the other rows, Unsloth's recipe), mean-cov (seeded samples with the "
            "other rows' mean and covariance) or zero; quantised GGUF rows are re-quantised to their type. "
            "The copy is re-scanned, and repair.json / repair.md state what changed and the sha256 of every "
            "other tensor before and after."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP.split(" | https")[0])
    p.add_argument("--out", metavar="DIR", required=True, help="a new folder for the repaired copy")
    p.add_argument("--tokens", default="holes", metavar="SET",
                   help=f"{', '.join(SETS[:2])} (needs --from a scan --verify) or ids such as 5,7-9, combined "
                        "with commas (default: holes, found by scanning SOURCE unless --from gives them)")
    p.add_argument("--from", dest="scan", metavar="SCAN.json", help="take the token sets from this scan of SOURCE")
    p.add_argument("--recipe", choices=("mean", "mean-cov", "zero"), default="mean",
                   help="the new rows (default: mean)")
    p.add_argument("--matrix", choices=("input", "output", "both"), default="both",
                   help="which matrices to repair (default: both; a tied matrix is repaired once)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="mean-cov: the random seed (default %(default)s)")
    p.add_argument("--verify", action="store_true",
                   help="verify the repaired tokens with the model itself (magikarp), before and after, side by side "
                        "(SOURCE must be a whole model: a folder with its tokenizer, a GGUF, an Ollama model)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def run(args) -> int:
    from blackholes.pipelines.repair import repair

    result = repair(args.source, args.out, tokens=args.tokens, scan=args.scan, recipe=args.recipe,
                    matrix=args.matrix, seed=args.seed, verify=args.verify)
    if not args.quiet:
        r = result.report
        for c in r["changed"]:
            print(f"Repaired {c['rows']:,} rows of {c['key']} ({c['matrix']}, {c['dtype']}): "
                  f"{c['bytes_changed']:,} of {c['bytes_written']:,} bytes written changed")
        n = sum(len(v) for v in r["unchanged_tensors"].values())
        print(f"Unchanged: every other byte; {n:,} other tensors and {len(r['unchanged_files']):,} other files "
              "hash the same")
        print(f"Re-scan: {r['check']['summary']}")
        for note in r["notes"]:
            print(f"Note: {note}")
        if r.get("verification"):
            v = r["verification"]
            print(f"Verified before and after: {v['verdicts_changed']:,} of {len(v['tokens']):,} verdicts changed "
                  "(side by side in repair.md)")
    print(f"Repaired copy: {result.out}/  (report: repair.md, repair.json)")
    return 0
