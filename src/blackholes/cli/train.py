"""``blackholes train``: grow a black hole in a tiny byte-level GPT, recording every step.

Parsing and calling only; the work is :func:`blackholes.training.loop.train`. Every
option but ``--out`` and ``--quiet`` is a :class:`~blackholes.training.config.TrainConfig`
field, declared (with its default and help) there.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["--out", "rec.safetensors", "--steps", "20"])
>>> args.out, args.steps
('rec.safetensors', 20)
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    from blackholes.training.config import add_config_arguments

    p = subparsers.add_parser(
        "train",
        help="grow a black hole: train a tiny byte-level GPT from one shared point, recording every step",
        description=(
            "Train a byte-level GPT whose embedding rows all start at one point (plus sigma times noise) and "
            "stream every step -- the tied embedding matrix, its gradient, the last position's logits, the loss "
            "and Adam's state -- to one safetensors recording. Without --corpus it uses the package's own "
            "default corpus. Ctrl-C, SIGTERM or SIGHUP keep the steps done so far (metadata complete: false)."
        ),
    )
    groups = {name: p.add_argument_group(title) for name, title in (
        ("run", "run"), ("recording", "recording"), ("model", "model"), ("optimizer", "optimizer (AdamW)"),
        ("execution", "execution"))}
    groups["run"].add_argument("--out", metavar="PATH", required=True, help="the recording to write (.safetensors)")
    add_config_arguments(p, groups)
    groups["execution"].add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def run(args) -> int:
    import warnings

    from blackholes.training.config import config_from_arguments
    from blackholes.training.loop import train

    config = config_from_arguments(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = train(config, args.out, progress=not args.quiet)
    for w in caught:  # torch.compile unavailable: say so in one line, not a warning dump
        if "torch.compile is not available" in str(w.message):
            if not args.quiet:
                print(f"blackholes: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if result.interrupted:  # the one stop line: cli/main.py
        from blackholes.errors import Stopped

        raise Stopped(result.stopped_by, kept=f"interrupted after {result.steps_done} steps; partial recording "
                      f"(complete: false) written to {result.path}")
    if not args.quiet:
        print(result.summary())
    return 0
