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
import contextlib
import gc
import signal
import sys

from blackholes import __version__
from blackholes.cli import census as census_cli
from blackholes.cli import scan as scan_cli
from blackholes.cli import sweep as sweep_cli
from blackholes.cli.scan import add_source_arguments, matrix_files
from blackholes.errors import BlackholesError


# ---------------------------------------------------------------------------- scan


def _check_outputs(outputs, inputs=(), removals=()) -> None:
    """Fail before any work, not after it (see :func:`blackholes.io.paths.check_outputs`)."""
    from blackholes.io.paths import check_outputs

    check_outputs(outputs, inputs=inputs, removals=removals)


# ---------------------------------------------------------------------------- map


def _add_map(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "map",
        help="density map of an embedding matrix, without and with the black-hole mask",
        description=(
            "Project an embedding matrix onto its two leading principal directions (randomised PCA, "
            "streamed over the memory-mapped rows) and draw the token density as heat maps side by side, "
            "without and with the black-hole mask, plus the distribution of row norms. "
            "SOURCE is anything `blackholes scan` accepts."
        ),
    )
    add_source_arguments(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mask", metavar="PATH", help="mask file written by `blackholes scan --mask`")
    group.add_argument("--auto-mask", action="store_true", help="scan the matrix for black holes first")
    p.add_argument("--out", metavar="FILE.png", required=True, help="where to write the figure (PNG)")
    p.add_argument("--json", metavar="PATH", help="also write the projection's numbers as JSON")
    p.add_argument("--bins", type=int, metavar="N",
                   help="histogram bins per axis (default: 4 sqrt(rows), from 24 to 200)")
    p.add_argument("--title", help="figure title (default: the source and tensor name)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _run_map(args) -> int:
    from blackholes.analysis.density import density_map
    from blackholes.sources import load_matrix

    if not args.out.lower().endswith(".png"):
        raise BlackholesError(f"--out must name a .png file, got {args.out}")
    if args.bins is not None and not 2 <= args.bins <= 2000:
        raise BlackholesError(f"--bins must be between 2 and 2000, got {args.bins}")
    args.quiet = args.quiet or args.json == "-"  # standard output is the JSON
    outputs = (args.out, args.json)
    _check_outputs(outputs, inputs=(args.source, args.mask))
    m = load_matrix(args.source, key=args.key, matrix=args.matrix)  # the header only: cheap
    _check_outputs(outputs, inputs=matrix_files(m))
    result = density_map(
        m, mask=args.mask, auto_mask=args.auto_mask,
        bins=args.bins, progress=not args.quiet,
    )
    from blackholes.render.plots import plot_density_map

    plot_density_map(result, args.out, title=args.title)
    if args.json:
        from blackholes.io.atomic import write_json

        write_json(args.json, result.to_json())
    if not args.quiet:
        V, D = result.shape
        print(f"Matrix: {result.source} [{result.key}]  {V:,} x {D:,} {result.dtype}")
        ratio = result.full.explained_variance_ratio
        print(f"PC1, PC2 explain {ratio[0]:.1%}, {ratio[1]:.1%} of the variance (all tokens)")
        print(f"Densest bin without mask: {result.peak_bin_count():,} tokens")
        if result.masked is not None:
            print(
                f"Densest bin with mask:    {result.peak_bin_count(masked=True):,} tokens "
                f"({result.black_hole_tokens:,} black-hole tokens masked, from {result.mask_source})"
            )
        elif result.mask is not None:
            print(f"No black holes (mask from {result.mask_source} is empty): nothing to mask, one map drawn")
        else:
            print("No mask given: pass --auto-mask (or --mask PATH) to compare with the black holes removed")
        print(f"Map written to {args.out}")
        if args.json:
            print(f"Numbers written to {args.json}")
    return 0


# ---------------------------------------------------------------------------- dynamics


def _dynamics_steps() -> str:
    from blackholes.analysis.dynamics import DEFAULT_STEPS  # numpy only: cheap

    return ",".join(map(str, DEFAULT_STEPS))


def _add_dynamics(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
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
    p.add_argument(
        "--steps", default=_dynamics_steps(), metavar="LIST",
        help=f"training steps for the sampled sections (default {_dynamics_steps()})",
    )
    p.add_argument("--census", action="store_true",
                   help="also count every group at every step, exactly: holes, fission and merger events, "
                        "last motion of each token, phases of each hole (JSON section 'census')")
    p.add_argument("--json", metavar="PATH", help="write the full report (with per-step series) as JSON")
    p.add_argument("--plots", metavar="DIR", help="write the dynamics figures (PNG) into DIR")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _run_dynamics(args) -> int:
    import os

    from blackholes.analysis.dynamics import analyze

    if args.plots and os.path.exists(args.plots) and not os.path.isdir(args.plots):
        raise BlackholesError(f"--plots must be a directory: {args.plots}")
    plots = _dynamics_plot_paths(args) if args.plots and os.path.isdir(args.plots) else []
    args.quiet = args.quiet or args.json == "-"  # standard output is the JSON
    _check_outputs([args.json, *plots], inputs=(args.recording, args.corpus))
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
        paths = _draw_dynamics(result, census, args.plots)
        if not args.quiet:
            print("Plots written: " + ", ".join(str(p) for p in paths))
    return 0


def _dynamics_plot_paths(args) -> list:
    from pathlib import Path

    from blackholes.render.plots import dynamics_plot_paths

    extra = [Path(args.plots) / name for name in ("census.png", "census_last_motion.png")] if args.census else []
    return dynamics_plot_paths(args.plots) + extra


def _draw_dynamics(result, census, folder) -> list:
    from pathlib import Path

    from blackholes.render.plots import plot_dynamics

    paths = plot_dynamics(result, folder)
    if census is not None:
        from blackholes.render.lifecycle import plot_census, plot_last_motion

        paths.append(plot_census(census, Path(folder) / "census.png"))
        paths.append(plot_last_motion(census, Path(folder) / "census_last_motion.png", result.untrained_tokens))
    return paths


# ---------------------------------------------------------------------------- reproduce


def _add_reproduce(sub) -> argparse.ArgumentParser:
    from blackholes.training.config import INITS, PRECISIONS  # no torch: the config module only names them

    p = sub.add_parser(
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
    p.add_argument("--steps", type=int, metavar="N",
                   help="training steps (default 2,000: the hole forms, moves and freezes well within it)")
    p.add_argument("--sigma", type=float, default=0.0, metavar="S",
                   help="spread of the initial embedding rows around their shared centre (default 0: one point)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS, default="bf16",
                   help="training precision, as `train --precision`: bf16 (weights and Adam state in bf16, the "
                   "original's), fp32, or bf16-mixed (fp32 master weights, bf16 autocast) (default bf16; "
                   "--dtype is the older name)")
    p.add_argument("--init", choices=INITS, default="centre",
                   help="initialisation, as `train --init` (default centre: one shared point plus sigma noise)")
    p.add_argument("--vocab", type=int, default=128, metavar="N",
                   help="byte vocabulary: 128 (ASCII, default) or up to 256 for arbitrary bytes")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the recording, results and report")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the report's location")
    return p


def _run_reproduce(args) -> int:
    from blackholes.pipelines.reproduce import DEFAULT_STEPS, reproduce

    result = reproduce(
        args.out, corpus=args.corpus, steps=DEFAULT_STEPS if args.steps is None else args.steps, sigma=args.sigma, seed=args.seed,
        precision=args.precision, init=args.init,
        force=args.force, progress=not args.quiet, log=None if args.quiet else print,
        recipe=None if args.vocab == 128 else {"vocab": args.vocab},
    )
    if not args.quiet:
        print()
        for line in result.answer:
            print("  " + line.replace("**", ""))
        print()
    print(f"Report: {result.report_html}  (also {result.report_md.name}; all files in {result.out_dir}/)")
    return 0


# ---------------------------------------------------------------------------- train


def _add_train(sub) -> argparse.ArgumentParser:
    from blackholes.training.config import add_config_arguments

    p = sub.add_parser(
        "train",
        help="grow a black hole: train a tiny byte-level GPT from one shared point, recording every step",
        description=(
            "Train a byte-level GPT whose embedding rows all start at one point (plus sigma times noise) and "
            "stream every step -- the tied embedding matrix, its gradient, the last position's logits, the loss "
            "and Adam's state -- to one safetensors recording. Without --corpus it uses the package's own "
            "default corpus. Ctrl-C, SIGTERM or SIGHUP keep the steps done so far (metadata complete: false)."
        ),
    )
    # Every option but --out and --quiet is a TrainConfig field, declared (with its default) there.
    groups = {name: p.add_argument_group(title) for name, title in (
        ("run", "run"), ("recording", "recording"), ("model", "model"), ("optimizer", "optimizer (AdamW)"),
        ("execution", "execution"))}
    groups["run"].add_argument("--out", metavar="PATH", required=True, help="the recording to write (.safetensors)")
    add_config_arguments(p, groups)
    groups["execution"].add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _run_train(args) -> int:
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
    if result.interrupted:
        by = f" ({result.stopped_by})" if result.stopped_by else ""
        print(f"blackholes: interrupted after {result.steps_done} steps{by}; "
              f"partial recording (complete: false) written to {result.path}", file=sys.stderr)
        return 128 + int(getattr(signal, result.stopped_by or "SIGINT"))
    if not args.quiet:
        print(result.summary())
    return 0


# ---------------------------------------------------------------------------- main

COMMANDS = [
    (scan_cli.add_parser, scan_cli.run),
    (census_cli.add_parser, census_cli.run),
    (sweep_cli.add_parser, sweep_cli.run),
    (_add_map, _run_map),
    (_add_reproduce, _run_reproduce),
    (_add_dynamics, _run_dynamics),
    (_add_train, _run_train),
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
    _printable_anywhere()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):  # --quiet: errors only, no library warnings either
        import warnings

        warnings.simplefilter("ignore")
    received = [None]
    try:
        with _signals_as_interrupts(received):
            status = args._run(args)
        # Exit without a final garbage-collection sweep over the objects torch.compile
        # leaves behind (~1 s at interpreter shutdown after `train`): nothing is left to free.
        gc.freeze()
        return status
    except BlackholesError as e:
        print(f"blackholes: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if received[0] is None and getattr(e, "signal_name", None):  # a lower layer stopped at a safe point
            received[0] = getattr(signal, e.signal_name)
        name = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}.get(received[0], "interrupted")
        print(f"blackholes: {name}", file=sys.stderr)
        return 128 + int(received[0] or signal.SIGINT)
    except BrokenPipeError:
        return 1
    except MemoryError:
        print("blackholes: error: out of memory (the sizes asked for do not fit in this machine's memory)",
              file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ...: the OS's words, one line
        name = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"blackholes: error: {e.strerror or e}{name}", file=sys.stderr)
        return 2


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def _printable_anywhere() -> None:
    """An ASCII-only or non-UTF-8 terminal gets escapes for what it cannot show, never a crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot be reconfigured: leave it
                pass


@contextlib.contextmanager
def _signals_as_interrupts(received: list):
    """SIGTERM (a scheduler's stop) and SIGHUP (a closed terminal) stop a run like Ctrl-C does:
    at a safe point, keeping a valid output marked incomplete, or none. ``received[0]``: the signal."""

    def handler(signum, frame):
        received[0] = signum
        raise KeyboardInterrupt

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
