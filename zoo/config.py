"""Typed configs: dataclasses with defaults, strict `key=value` overrides and JSON round trips.

Every model's config is a frozen-free dataclass of plain fields (int, float, bool, str, tuples
of those). Overrides come from the CLI (`--set key=value`) or a pipeline parameter (a JSON
object) and are checked against the field types; a bad key or value raises ConfigError naming
the key, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from zoo.errors import ConfigError

T = TypeVar("T")

#: Numeric precisions a TrainConfig accepts (Keras dtype policies).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (str from the CLI or a JSON value) to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0], where)
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}={value!r} is not a list of {_type_name(elem)}")
        return tuple(_coerce(key, v, elem, where) for v in value)
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


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a config dataclass from a dict, rejecting unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of settings, got {type(data).__name__}")
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"valid: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(k, v, types_[k], where) for k, v in data.items()}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


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
