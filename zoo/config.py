"""Typed configs: dataclasses with defaults, strict `key=value` overrides and JSON round trips.

Every model's config is a dataclass of plain fields (int, float, bool, str, tuples of those).
Overrides come from the CLI (`--set key=value`) or a pipeline parameter (a JSON object) and are
checked against the field types; a bad key or value raises ConfigError naming the key, the
value and what is valid.

The same machinery reads YAML documents (cluster profiles, pipelines/profile.py) with
`strict=True`: no string parsing, and also `Literal` choices, nested dataclasses,
`dict[K, V]`, `list[X]` and `TypedDict` records; errors name the dotted key path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
import typing
from typing import Any, Literal, TypeVar

import yaml

from zoo.errors import ConfigError

T = TypeVar("T")

#: Numeric precisions a TrainConfig accepts (Keras dtype policies).
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)

_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}


class FieldError(ConfigError):
    """A bad value of one field: `key` (a dotted path inside its config) and what is wrong.

    A config's `validate` (or `__post_init__`) raises it; `from_dict` puts the file and the
    path around it. Raised outside `from_dict`, it reads "<owner>: <key>: <message>".
    """

    def __init__(self, key: str, message: str, owner: str = "") -> None:
        super().__init__(f"{owner}: {key}: {message}" if owner else f"{key}: {message}")
        self.key = key
        self.message = message


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return f"({_choices(tp)})"
    return getattr(tp, "__name__", str(tp))


def _choices(tp: Any) -> str:
    return ", ".join(str(a) for a in typing.get_args(tp))


def _coerce(key: str, value: Any, tp: Any, where: str, strict: bool = False) -> Any:
    """Convert `value` to the field type `tp`: a CLI string or JSON value, or (`strict`) a
    YAML/JSON value that must already have the type (no "3" for 3, no "a,b" for a list)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (
            not strict and isinstance(value, str) and value.lower() in ("none", "null")
        ):
            return None
        return _coerce(key, value, args[0], where, strict)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice and type(value) is type(choice):
                return choice
            if not strict and isinstance(value, str) and value == str(choice):
                return choice
        raise ConfigError(f"{where}: {key}={value!r} is not one of {_choices(tp)}")
    if origin in (tuple, list):
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str) and not strict:
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}={value!r} is not a list of {_type_name(elem)}")
        # Strict (documents): each element's path has its index; CLI lists keep the key.
        return origin(
            _coerce(f"{key}[{i}]" if strict else key, v, elem, where, strict)
            for i, v in enumerate(value)
        )
    if origin is dict:
        return _coerce_dict(key, value, tp, where, strict)
    if typing.is_typeddict(tp):
        return _coerce_record(key, value, tp, where, strict)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            check_types(value, where, f"{key}.")
            return value
        return from_dict(tp, value, where, strict=strict, path=f"{key}.")
    if (
        tp in _NAMES
        and strict
        and (type(value) is not tp and not (tp is float and type(value) is int))
    ):
        raise ConfigError(f"{where}: {key}={value!r} is not {_NAMES[tp]}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: {key}={value!r} is not a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key}={value!r} is not an integer")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}={value!r} is not an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key}={value!r} is not a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}={value!r} is not a number") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {key}={value!r} is not a finite number")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}={value!r} is not a string")
        return value
    raise ConfigError(f"{where}: {key} has unsupported type {tp!r}")


def _coerce_dict(key: str, value: Any, tp: Any, where: str, strict: bool) -> dict[Any, Any]:
    """A `dict[K, V]`: a mapping whose keys are K (a `Literal` lists the valid ones)."""
    key_tp, value_tp = typing.get_args(tp)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}={value!r} is not a mapping")
    out = {}
    for k, v in value.items():
        if typing.get_origin(key_tp) is Literal and k not in typing.get_args(key_tp):
            raise ConfigError(f"{where}: {key}.{k}: unknown key; valid keys are {_choices(key_tp)}")
        if key_tp is str and (not isinstance(k, str) or not k):
            raise ConfigError(f"{where}: {key}: keys must be non-empty strings, got {k!r}")
        out[k] = _coerce(f"{key}.{k}", v, value_tp, where, strict)
    return out


def _coerce_record(key: str, value: Any, tp: Any, where: str, strict: bool) -> dict[str, Any]:
    """A `TypedDict` (total=False): a plain dict of known keys; keys whose value is None drop."""
    hints = _hints(tp)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}={value!r} is not a mapping with keys {', '.join(hints)}")
    unknown = [k for k in value if k not in hints]
    if unknown:
        raise ConfigError(
            f"{where}: {key}.{unknown[0]}: unknown key; valid keys are {', '.join(hints)}"
        )
    out = {k: _coerce(f"{key}.{k}", value[k], hints[k], where, strict) for k in hints if k in value}
    return {k: v for k, v in out.items() if v is not None}


def field_types(cls: type) -> dict[str, Any]:
    return dict(_field_types(cls))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    # Cached: resolving string annotations costs more than checking the values.
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def from_dict(
    cls: type[T],
    data: dict[str, Any],
    where: str = "config",
    *,
    strict: bool = False,
    path: str = "",
) -> T:
    """Build a config dataclass from a dict, rejecting unknown keys and mistyped values.

    `strict`: values must already have their field's type (YAML/JSON documents, not CLI
    strings). `path` prefixes every key in messages (a nested config's place, "resources.train.").
    """
    types_ = _field_types(cls)
    if not isinstance(data, dict):
        if path:
            keys = ", ".join(types_)
            raise ConfigError(f"{where}: {path[:-1]}={data!r} is not a mapping with keys {keys}")
        raise ConfigError(f"{where}: expected a JSON object of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(types_))
    if unknown:
        names = ", ".join(repr(f"{path}{k}") if path else repr(k) for k in unknown)
        raise ConfigError(
            f"{where}: unknown setting(s) {names} for {cls.__name__}; "
            f"valid: {', '.join(sorted(types_))}"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: {path}{missing[0]}: missing (a {cls.__name__} needs it)")
    kwargs = {k: _coerce(path + k, v, types_[k], where, strict) for k, v in data.items()}
    try:
        cfg = cls(**kwargs)
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
    except FieldError as e:
        raise ConfigError(f"{where}: {path}{e.key}: {e.message}") from None
    return cfg


def check_types(cfg: Any, where: str, path: str = "") -> None:
    """Raise ConfigError unless every field of the dataclass `cfg` has its declared type
    (a config built in code, e.g. by `dataclasses.replace`, rather than by `from_dict`)."""
    for name, tp in _field_types(type(cfg)).items():
        _coerce(path + name, getattr(cfg, name), tp, where, strict=True)


def yaml_mapping(text: str, where: str, what: str = "settings") -> dict[str, Any]:
    """A YAML document that must be a mapping; bad YAML is one ConfigError line with its place."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of {what}, got {type(doc).__name__}")
    return doc


def overlay(*layers: Any) -> Any:
    """The last layer over the ones before, mappings merged key by key at every depth; a
    value that is not a mapping (None included) replaces what is below it. Copies."""
    out: Any = None
    for layer in layers:
        if isinstance(out, dict) and isinstance(layer, dict):
            out = {**out, **{k: overlay(out.get(k), v) for k, v in layer.items()}}
        else:
            out = copy.deepcopy(layer)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def parse_overrides(items: list[str] | tuple[str, ...], where: str = "--set") -> dict[str, str]:
    """Parse `key=value` strings (values stay strings; `apply_overrides` types them)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: {item!r} is not key=value (for example epochs=5)")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(cfg: T, overrides: dict[str, Any], where: str = "--set") -> T:
    """Return a copy of `cfg` with typed overrides applied and validated."""
    merged = {**to_dict(cfg), **overrides}
    return from_dict(type(cfg), merged, where)


def require(cond: bool, message: str) -> None:
    """Config validation helper: raise ConfigError(message) when cond is false."""
    if not cond:
        raise ConfigError(message)


def json_object(text: str, name: str) -> dict[str, Any]:
    """A parameter that must hold a JSON object (config overrides); "" means {}."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name} {text!r} is not a JSON object: {e.msg}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} {text!r} is not a JSON object")
    return value


def merge_overrides(platform_overrides: str, overrides: str) -> dict[str, Any]:
    """The profile's train_defaults with the run's own overrides over them (both JSON)."""
    return {
        **json_object(platform_overrides, "platform_overrides"),
        **json_object(overrides, "overrides"),
    }
