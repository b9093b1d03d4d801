"""The import graph's rules (tests/layers.py): layers, cycles and file sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import layers

ROOT = Path(__file__).resolve().parents[1]


def test_import_graph_has_no_upward_import_no_cycle_no_oversized_file() -> None:
    assert layers.problems() == []


def test_checker_finds_an_upward_import_and_a_cycle() -> None:
    """The checker itself: a library module importing the CLI, and a two-module cycle."""
    graph = {"zoo.a": {"zoo.b"}, "zoo.b": {"zoo.a"}, "zoo.c": set()}
    assert layers.cycles(graph) == [["zoo.a", "zoo.b"]]
    assert layers.rank("zoo.train") < layers.rank("genpipe.ops.stack") < layers.rank("components")
    assert layers.rank("components.train") < layers.rank("pipelines.factory")
    assert layers.rank("pipelines.factory") < layers.rank("genpipe.cli.pipeline")
    known = layers.modules()
    src = ROOT / "zoo" / "train.py"
    assert "zoo.storage" in layers.imports(src, "zoo.train", known)


def test_command_exits_zero_and_says_ok() -> None:
    r = subprocess.run(
        [sys.executable, "tests/layers.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("layers ok:")
