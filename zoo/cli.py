"""`genpipe` command line: embedded stack, local runs, compile (and, later, cluster commands).

Errors a user can fix (GenpipeError) are printed as one line and exit 1; `--debug` shows the
traceback. Heavy imports (TensorFlow, kfp, mlflow) happen inside commands so `--help` is fast.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

# TensorFlow's C++ start-up chatter would bury our one-line errors; real warnings stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from zoo.errors import GenpipeError  # noqa: E402

app = typer.Typer(
    name="genpipe",
    help="Train generative models as Kubeflow Pipelines tracked in MLflow - on a cluster or on a laptop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


def _register_commands() -> None:
    from zoo import cli_pipeline, cli_stack

    cli_stack.register(app)
    cli_pipeline.register(app)
    __import__("zoo.cli_generate").cli_generate.register(app)
    __import__("zoo.cli_cluster").cli_cluster.register(app)


_register_commands()


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error base class: vendored by newer typer, plain click in older ones."""
    found: list[type[Exception]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(importlib.import_module(module).ClickException)
    return tuple(found)


def main() -> None:
    """Entry point with one-line errors (no traceback unless --debug)."""
    try:
        # standalone_mode=False lets GenpipeError reach us; click then returns typer.Exit's
        # code instead of exiting, and raises usage errors and Abort instead of printing them.
        rc = app(standalone_mode=False)
    except GenpipeError as e:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:  # Ctrl-C or a declined prompt
        console.print("Aborted.")
        sys.exit(1)
    except _click_errors() as e:  # bad option, unknown command: click's usage message
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    if isinstance(rc, int) and not isinstance(rc, bool) and rc:
        sys.exit(rc)


def entry() -> None:
    """The `genpipe` program: `main()`, then a quick exit once a command has loaded TensorFlow.

    The command is done and has flushed what it wrote; this skips the seconds a
    TensorFlow-loaded interpreter spends tearing itself down (there is nothing to clean up:
    the stack's servers are detached, task processes are reaped). In-process callers (tests)
    use `main()`, which returns normally.
    """
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
