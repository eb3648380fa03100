"""The command line: parsing and calling only (``blackholes SUBCOMMAND ...``)."""

from blackholes.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
