"""Shared test fixtures (the plain helpers they use are in support.py, importable by name)."""

from __future__ import annotations

import pytest

from support import assert_one_line_error


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv, words=None)``: run the CLI in-process and assert a one-line refusal; returns stderr."""
    from blackholes.cli import main

    def check(argv, words=None) -> str:
        status = main([str(a) for a in argv])
        return assert_one_line_error(status, capsys.readouterr().err, words)

    return check
