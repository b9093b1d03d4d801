"""zoo.config in strict mode: the typed reading of YAML/JSON documents (cluster profiles).

Literal choices, nested dataclasses, dict[K, V], lists and TypedDict records, each bad value
one ConfigError line naming the place (where + dotted key path), the value and what is valid.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, TypedDict

import pytest

from zoo.config import (
    FieldError,
    check_types,
    from_dict,
    overlay,
    parse_overrides,
    yaml_mapping,
)
from zoo.errors import ConfigError

Color = Literal["red", "green"]


class Tag(TypedDict, total=False):
    key: str
    weight: int | None


@dataclasses.dataclass
class Part:
    size: int
    color: Color = "red"

    def validate(self) -> None:
        if self.size < 1:
            raise FieldError("size", f"{self.size} must be >= 1")


@dataclasses.dataclass
class Doc:
    name: str
    parts: dict[Literal["a", "b"], Part] = dataclasses.field(default_factory=dict)
    tags: list[Tag] = dataclasses.field(default_factory=list)
    colors: tuple[Color, ...] = ()
    ratio: float = 1.0
    on: bool = False


def load(data: dict, **kw: object) -> Doc:
    return from_dict(Doc, data, "doc.yaml", strict=True, **kw)  # type: ignore[arg-type]


def test_a_valid_document_builds_typed_values() -> None:
    doc = load(
        {
            "name": "x",
            "parts": {"a": {"size": 2, "color": "green"}},
            "tags": [{"key": "k", "weight": None}],
            "colors": ["green", "red"],
            "ratio": 2,
        }
    )
    assert doc.parts == {"a": Part(2, "green")}
    # A record stays a plain dict; keys given as null are dropped.
    assert doc.tags == [{"key": "k"}]
    assert doc.colors == ("green", "red") and doc.ratio == 2.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "colors": ["blue"]}, "doc.yaml: colors[0]='blue' is not one of red, green"),
        (
            {"name": "x", "parts": {"c": {"size": 1}}},
            "doc.yaml: parts.c: unknown key; valid keys are a, b",
        ),
        (
            {"name": "x", "parts": {"a": {"size": "2"}}},
            "doc.yaml: parts.a.size='2' is not an integer",
        ),
        ({"name": "x", "parts": {"a": {"size": 0}}}, "doc.yaml: parts.a.size: 0 must be >= 1"),
        ({"name": "x", "parts": {"a": {"sise": 1}}}, "unknown setting(s) 'parts.a.sise' for Part"),
        (
            {"name": "x", "parts": {"a": None}},
            "doc.yaml: parts.a=None is not a mapping with keys size, color",
        ),
        ({"name": "x", "parts": {"a": {}}}, "doc.yaml: parts.a.size: missing"),
        (
            {"name": "x", "tags": [{"key": "k", "wait": 1}]},
            "doc.yaml: tags[0].wait: unknown key; valid keys are key, weight",
        ),
        ({"name": "x", "tags": [{"key": 3}]}, "doc.yaml: tags[0].key=3 is not a string"),
        ({"name": "x", "colors": "red,green"}, "colors='red,green' is not a list of (red, green)"),
        ({"name": "x", "on": "true"}, "doc.yaml: on='true' is not a boolean (true or false)"),
        ({"name": "x", "on": 1}, "doc.yaml: on=1 is not a boolean"),
        ({"name": "x", "ratio": True}, "doc.yaml: ratio=True is not a number"),
        ({"colors": []}, "doc.yaml: name: missing"),
    ],
)
def test_strict_errors_are_one_line_with_path_value_and_choices(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_path_prefixes_every_key() -> None:
    with pytest.raises(ConfigError, match=r"doc.yaml: profiles.lab.parts.a.size: 0 must be >= 1"):
        load({"name": "x", "parts": {"a": {"size": 0}}}, path="profiles.lab.")


def test_cli_mode_still_parses_strings() -> None:
    """Model configs (CLI `--set`, not strict) keep reading "2", "true" and "a,b"."""
    doc = from_dict(Doc, {"name": "x", "on": "yes", "colors": "red,green", "ratio": "0.5"})
    assert doc.on is True and doc.colors == ("red", "green") and doc.ratio == 0.5
    assert parse_overrides(["on=1"]) == {"on": "1"}


def test_check_types_catches_configs_built_in_code() -> None:
    check_types(Doc(name="x", colors=("red",)), "doc")
    with pytest.raises(ConfigError, match=r"^doc: colors='red' is not a list"):
        check_types(Doc(name="x", colors="red"), "doc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^doc: parts.a.size='1' is not an integer"):
        check_types(Doc(name="x", parts={"a": Part("1")}), "doc")  # type: ignore[arg-type]


def test_overlay_merges_mappings_at_every_depth_and_copies() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": [1]}
    out = overlay(base, {"a": {"y": 3}}, {"c": 4})
    assert out == {"a": {"x": 1, "y": 3}, "b": [1], "c": 4}
    out["b"].append(2)
    assert base["b"] == [1]
    # A non-mapping (None too) replaces: the type check then names it.
    assert overlay(base, {"a": None}) == {"a": None, "b": [1]}


def test_yaml_mapping_errors_name_the_place() -> None:
    assert yaml_mapping("a: 1\n", "f.yaml") == {"a": 1}
    with pytest.raises(ConfigError, match=r"^f.yaml: not valid YAML \(line 2, column 1\)"):
        yaml_mapping("a: [1\n", "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml: expected a mapping of things, got list"):
        yaml_mapping("- 1\n", "f.yaml", "things")
