"""Typer's value coercion without importing pydantic when a value needs no coercion.

Typer (>= 0.2x) coerces every parameter's value through a pydantic TypeAdapter, so any
command imports pydantic (~0.1 s, most of `genpipe run`'s start-up) even when every value is
already what it should be: a string option given a string, a default of the declared type.
`fast_coercion(command)` gives each of the command's parameters a coercion that returns such
values as typer would (the same object, or a list for a repeatable string option) and hands
everything else (numbers typed on the command line, paths, choices, bad values) to typer's
own, built on first use, so results and error messages stay typer's. On a typer without this
machinery it changes nothing.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

_TYPER = object()  # "typer decides"


def _as_is(descriptor: Any, value: Any) -> Any:
    """`value` as typer's coercion would return it, where that needs no conversion; else _TYPER."""
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or getattr(info, "parser", None) is not None:
        return _TYPER
    if getattr(info, "click_type", None) is not None:
        return _TYPER
    annotation = descriptor.annotation
    if annotation is str:
        return value if type(value) is str else _TYPER
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        if isinstance(value, list | tuple) and all(type(v) is str for v in value):
            return list(value)
        return _TYPER
    if annotation in (int, float, bool) and type(value) is annotation:
        # a range (min/max/clamp) is typer's to check
        ranged = info.min is not None or info.max is not None or bool(info.clamp)
        return _TYPER if ranged else value
    return _TYPER


class _Coercion:
    """One parameter's coercion: `_as_is` where it applies, else typer's own."""

    def __init__(self, descriptor: Any) -> None:
        self.descriptor = descriptor
        self._typer: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:  # what typer's RuntimeParam.coerce returns, before any adapter
            return () if (param.multiple or param.nargs == -1) else None
        same = _as_is(self.descriptor, value)
        if same is not _TYPER:
            return same
        if self._typer is None:
            from typer._coercion import build_runtime_param

            self._typer = build_runtime_param(self.descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)


def _install(param: Any) -> None:
    if (
        hasattr(param, "get_runtime_param")
        and hasattr(param, "type_descriptor")
        and getattr(param, "_runtime_param", _TYPER) is None
    ):
        param._runtime_param = _Coercion(param.type_descriptor)


def fast_coercion(command: Any, subcommands: bool = True) -> None:
    """Install `_Coercion` on `command`'s parameters, its --help option (made on first use)
    and, unless not `subcommands`, its subcommands' (a group's)."""
    for param in getattr(command, "params", ()):
        _install(param)
    made = getattr(command, "get_help_option", None)
    if callable(made):

        def get_help_option(ctx: Any) -> Any:
            option = made(ctx)
            if option is not None:
                _install(option)
            return option

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values() if subcommands else ():
        fast_coercion(sub)
