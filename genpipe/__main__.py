"""`python -m genpipe` is the `genpipe` command."""

from genpipe.cli import entry

entry()
