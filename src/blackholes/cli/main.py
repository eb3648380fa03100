"""The ``blackholes`` command: a thin layer over the Python API.

Each subcommand lives in ``cli/<name>.py`` with two functions: ``add_parser(subparsers)``
declares its arguments (and returns its parser) and ``run(args)`` calls the API; both
are listed in ``COMMANDS``. This module keeps only what every command shares: the
parser, the signal handling and the one-line errors. Heavy modules (torch,
matplotlib) are imported inside the ``run`` functions only, so ``blackholes scan``
starts in a fraction of a second.

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
from blackholes.cli import dynamics as dynamics_cli
from blackholes.cli import export as export_cli
from blackholes.cli import history as history_cli
from blackholes.cli import map as map_cli
from blackholes.cli import repair as repair_cli
from blackholes.cli import reproduce as reproduce_cli
from blackholes.cli import scan as scan_cli
from blackholes.cli import sweep as sweep_cli
from blackholes.cli import train as train_cli
from blackholes.cli import verify as verify_cli
from blackholes.errors import BlackholesError

# ---------------------------------------------------------------------------- main

COMMANDS = [
    (scan_cli.add_parser, scan_cli.run),
    (census_cli.add_parser, census_cli.run),
    (sweep_cli.add_parser, sweep_cli.run),
    (map_cli.add_parser, map_cli.run),
    (reproduce_cli.add_parser, reproduce_cli.run),
    (dynamics_cli.add_parser, dynamics_cli.run),
    (history_cli.add_parser, history_cli.run),
    (train_cli.add_parser, train_cli.run),
    (verify_cli.add_parser, verify_cli.run),
    (export_cli.add_parser, export_cli.run),
    (repair_cli.add_parser, repair_cli.run),
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
        if received[0] is None and getattr(e, "signal_name", None):  # errors.Stopped: stopped at a safe point
            received[0] = getattr(signal, e.signal_name)
        number = signal.Signals(received[0] or signal.SIGINT)
        print(stop_line(number.name, getattr(e, "kept", None)), file=sys.stderr)
        return 128 + int(number)
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


def stop_line(signal_name: str, kept: str | None = None) -> str:
    """The one line every command ends with when a signal stopped it (``kept``: what it kept).

    >>> stop_line("SIGTERM", "3 rows kept in c/census.jsonl; run the same command again to go on")
    'blackholes: terminated (SIGTERM): 3 rows kept in c/census.jsonl; run the same command again to go on'
    >>> stop_line("SIGINT")
    'blackholes: interrupted: no output left half-written'
    """
    words = {"SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}.get(signal_name, "interrupted")
    return f"blackholes: {words}: {_one_line(kept or 'no output left half-written')}"


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
