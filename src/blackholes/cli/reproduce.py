"""``blackholes reproduce``: the whole experiment, from training to ``report.html``.

Parsing and calling only; the work is :func:`blackholes.pipelines.reproduce.reproduce`.
The training options' defaults are :class:`~blackholes.training.config.TrainConfig`'s
(as ``blackholes train`` has them); the run's length is ``blackholes.defaults.REPRODUCE_STEPS``.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["--out", "run"])
>>> args.out, args.steps, args.sigma, args.seed, args.precision, args.init, args.vocab, args.numerics
('run', 2000, 0.0, 0, 'bf16', 'centre', 128, 'eager')
"""

from __future__ import annotations

import argparse

from blackholes import defaults


def add_parser(subparsers) -> argparse.ArgumentParser:
    from blackholes.training.config import INITS, NUMERICS, PRECISIONS, TrainConfig  # no torch: names and defaults only

    d = {name: f.default for name, f in TrainConfig.__dataclass_fields__.items()}
    p = subparsers.add_parser(
        "reproduce",
        help="the whole experiment: train from one point, scan, follow the hole, write report.html",
        description=(
            "Train a tiny byte-level GPT whose embedding rows all start at one point, record every step, "
            "find the black holes in the first and last embedding matrices, check step by step that the hole "
            "moves as one rigid body, draw the plots, and write everything with report.html and report.md "
            "into --out. Without --corpus it uses the package's own default corpus."
        ),
    )
    p.add_argument("--corpus", metavar="PATH", help="training text (any file of bytes; default: packaged corpus)")
    p.add_argument("--steps", type=int, default=defaults.REPRODUCE_STEPS, metavar="N",
                   help=f"training steps (default {defaults.REPRODUCE_STEPS:,}: the hole forms, moves and "
                   "freezes well within it)")
    p.add_argument("--sigma", type=float, default=d["sigma"], metavar="S",
                   help=f"spread of the initial embedding rows around their shared centre "
                   f"(default {d['sigma']:g}{': one point' if d['sigma'] == 0 else ''})")
    p.add_argument("--seed", type=int, default=d["seed"], metavar="N", help=f"random seed (default {d['seed']})")
    p.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS, default=d["precision"],
                   help="training precision, as `train --precision`: bf16 (weights and Adam state in bf16, the "
                   "original's), fp32, or bf16-mixed (fp32 master weights, bf16 autocast) "
                   f"(default {d['precision']}; --dtype is the older name)")
    p.add_argument("--numerics", choices=NUMERICS, default=d["numerics"],
                   help="how training rounds, as `train --numerics`: eager (PyTorch's kernels one op at a time, the "
                   "original's, the reference) or compiled (torch.compile's fused kernels: a recipe of its own) "
                   f"(default {d['numerics']})")
    p.add_argument("--compare-numerics", action="store_true",
                   help="also train the same run with the other numerics and say whether the freeze step and the "
                   "holes belong to the recipe or to its rounding")
    p.add_argument("--init", choices=INITS, default=d["init"],
                   help=f"initialisation, as `train --init` (default {d['init']}; centre: one shared point plus "
                   "sigma noise)")
    p.add_argument("--vocab", type=int, default=d["vocab"], metavar="N",
                   help=f"byte vocabulary (default {d['vocab']}: ASCII), or up to 256 for arbitrary bytes")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the recording, results and report")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the report's location")
    return p


def run(args) -> int:
    from blackholes.pipelines.reproduce import reproduce
    from blackholes.training.config import TrainConfig

    default_vocab = TrainConfig.__dataclass_fields__["vocab"].default
    result = reproduce(
        args.out, corpus=args.corpus, steps=args.steps, sigma=args.sigma, seed=args.seed,
        precision=args.precision, init=args.init, numerics=args.numerics, compare_numerics=args.compare_numerics,
        force=args.force, progress=not args.quiet, log=None if args.quiet else print,
        recipe=None if args.vocab == default_vocab else {"vocab": args.vocab},
    )
    if not args.quiet:
        print()
        for line in result.answer:
            print("  " + line.replace("**", ""))
        print()
    print(f"Report: {result.report_html}  (also {result.report_md.name}; all files in {result.out_dir}/)")
    return 0
