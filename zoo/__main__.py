"""`python -m zoo` is the `genpipe` command."""

from zoo.cli import entry

entry()
