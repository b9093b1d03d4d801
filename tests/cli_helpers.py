"""Run the `genpipe` CLI in-process as a user would, for tests (one copy for every test file).

Tests import it as `from cli_helpers import run_cli` (tests/ is on sys.path through
tests/conftest.py).
"""

from __future__ import annotations

import sys

import pytest

from genpipe import cli


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`genpipe ARGS` through cli.main (one-line errors, exit codes): (code, stdout, stderr)."""
    capsys.readouterr()
    old, sys.argv = sys.argv, ["genpipe", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    o = capsys.readouterr()
    return code, o.out, o.err
