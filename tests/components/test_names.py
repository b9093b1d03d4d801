"""zoo.names is the one home of the names that cross a step boundary."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from components.evaluate import evaluate
from components.ingest import ingest
from components.train import train
from zoo import names

ROOT = Path(__file__).resolve().parents[2]


def _outputs(fn: typing.Callable) -> set[str]:
    """A component's output names: its NamedTuple's fields and its Output[...] parameters."""
    hints = typing.get_type_hints(fn, include_extras=True)
    ret = hints.get("return")
    fields = set(getattr(ret, "_fields", ()))
    outs = {p for p, t in hints.items() if p != "return" and "Output" in str(t)}
    return fields | outs


@pytest.mark.parametrize(
    "fn, wanted",
    [
        (ingest, {names.OUT_RUN_ID, names.OUT_UNCHANGED, names.OUT_DATASET}),
        (train, {names.OUT_TRAINED_MODEL}),
        (evaluate, {names.OUT_BLESSED, names.OUT_BETTER, names.OUT_CHAMPION_VERSION}),
    ],
)
def test_output_constants_name_the_component_outputs(fn: typing.Callable, wanted: set) -> None:
    # KFP takes output names from the signatures; the pipeline reads them through zoo.names.
    assert wanted <= _outputs(fn)


def test_no_mlflow_key_is_spelt_outside_zoo_names() -> None:
    """A "genpipe.<key>" string literal in the code (not the tests) is a second name for a
    concept zoo.names already names."""
    literal = re.compile(r"""["']genpipe\.[a-z_]+["']""")
    found = []
    for folder in ("zoo", "components", "pipelines", "genpipe"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "zoo" / "names.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for m in literal.findall(line):
                    if m.strip("\"'") not in ("genpipe.ops", "genpipe.cli"):  # packages
                        found.append(f"{path.relative_to(ROOT)}:{n}: {m}")
    assert not found, found


def test_primary_tag_round_trips() -> None:
    assert names.parse_primary_tag(names.primary_tag("test_fid", 12.3456789)) == (
        "test_fid",
        12.3457,
    )
    assert names.parse_primary_tag("") is None and names.parse_primary_tag("x=") is None
