"""``blackholes dynamics``: check, step by step, that a black hole moves as one rigid body.

Parsing and calling only; the work is :func:`blackholes.analysis.dynamics.analyze` (and,
with ``--census``, :func:`blackholes.analysis.lifecycle.census_of_recording`).

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["recording.safetensors", "--tokens", "0-9", "--census"])
>>> args.recording, args.tokens, args.census
('recording.safetensors', '0-9', True)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from blackholes.errors import BlackholesError


def _default_steps() -> str:
    from blackholes.analysis.dynamics import DEFAULT_STEPS  # numpy only: cheap

    return ",".join(map(str, DEFAULT_STEPS))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dynamics",
        help="check, step by step, that a black hole moves as one rigid body",
        description=(
            "Read a training recording (safetensors with 'embeddings', 'grads', 'logits' per step) and check, "
            "bit for bit at every recorded step, that the untrained tokens keep identical logits, gradients "
            "and positions. Prints the original analysis' three sections at the sampled steps, then the "
            "per-step verdict. Untrained tokens: bytes absent from --corpus, or --tokens, or else the "
            "recording's never_seen metadata."
        ),
    )
    p.add_argument("recording", metavar="RECORDING", help="recording.safetensors (from `blackholes train`)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--corpus", metavar="PATH", help="untrained tokens = byte values absent from this file")
    group.add_argument("--tokens", metavar="IDS", help="untrained token ids, e.g. '0-9,11-31,127'")
    steps = _default_steps()
    p.add_argument("--steps", default=steps, metavar="LIST",
                   help=f"training steps for the sampled sections (default {steps})")
    p.add_argument("--census", action="store_true",
                   help="also count every group at every step, exactly: holes, fission and merger events, "
                        "last motion of each token, phases of each hole (JSON section 'census')")
    p.add_argument("--json", metavar="PATH", help="write the full report (with per-step series) as JSON")
    p.add_argument("--plots", metavar="DIR", help="write the dynamics figures (PNG) into DIR")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def run(args) -> int:
    from blackholes.analysis.dynamics import analyze
    from blackholes.io.paths import check_outputs

    if args.plots and os.path.exists(args.plots) and not os.path.isdir(args.plots):
        raise BlackholesError(f"--plots must be a directory: {args.plots}")
    plots = _plot_paths(args) if args.plots and os.path.isdir(args.plots) else []
    args.quiet = args.quiet or args.json == "-"  # standard output is the JSON
    check_outputs([args.json, *plots], inputs=(args.recording, args.corpus))  # fail before any work
    result = analyze(args.recording, corpus=args.corpus, tokens=args.tokens, steps=args.steps)
    census = None
    if args.census:
        from blackholes.analysis.lifecycle import census_of_recording

        census = census_of_recording(args.recording, never_seen=result.untrained_tokens)
    if not args.quiet:
        print(result.report())
        if census is not None:
            from blackholes.render.lifecycle import census_summary

            print()
            print(census_summary(census))
    if args.json:
        from blackholes.io.atomic import write_json

        doc = result.to_json()
        if census is not None:
            doc["census"] = census.to_json()
        write_json(args.json, doc)
        if not args.quiet:
            print(f"Report written to {args.json}")
    if args.plots:
        paths = _draw(result, census, args.plots)
        if not args.quiet:
            print("Plots written: " + ", ".join(str(p) for p in paths))
    return 0


def _plot_paths(args) -> list:
    from blackholes.render.plots import dynamics_plot_paths

    extra = [Path(args.plots) / name for name in ("census.png", "census_last_motion.png")] if args.census else []
    return dynamics_plot_paths(args.plots) + extra


def _draw(result, census, folder) -> list:
    from blackholes.render.plots import plot_dynamics

    paths = plot_dynamics(result, folder)
    if census is not None:
        from blackholes.render.lifecycle import plot_census, plot_last_motion

        paths.append(plot_census(census, Path(folder) / "census.png"))
        paths.append(plot_last_motion(census, Path(folder) / "census_last_motion.png", result.untrained_tokens))
    return paths
