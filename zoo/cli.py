"""`genpipe` command line: embedded stack, local runs, compile (and, later, cluster commands).

Errors a user can fix (GenpipeError) are printed as one line and exit 1; `--debug` shows the
traceback. Heavy imports (TensorFlow, kfp, mlflow) happen inside commands so `--help` is fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from zoo.errors import GenpipeError

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


_register_commands()


def main() -> None:
    """Entry point with one-line errors (no traceback unless --debug)."""
    try:
        app(standalone_mode=False)
    except GenpipeError as e:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(1)
