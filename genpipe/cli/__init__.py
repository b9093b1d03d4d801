"""`genpipe` command line, one module per noun, each thin over the library and operations:

stack.py     up, down, status, env (the embedded SeaweedFS + MLflow)
pipeline.py  models, run (kfp.local), compile (KFP IR YAML)
generate.py  generate (sample from a registered model)
cluster.py   submit, schedule, schedules (Kubeflow Pipelines)
registry.py  pull, serve, deploy (registered models in MLflow, KServe)
gc.py        gc (what interrupted runs left behind)
images.py    images build | push (component images)

Errors a user can fix (GenpipeError) are printed as one line and exit 1; `--debug` shows the
traceback. Heavy imports (TensorFlow, kfp, mlflow) happen inside commands so `--help` is fast.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

# TensorFlow's C++ start-up chatter would bury our one-line errors; real warnings stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from genpipe.cli.coercion import fast_coercion  # noqa: E402
from zoo.errors import GenpipeError  # noqa: E402

#: every command -> the module (genpipe/cli/NOUN.py) whose `register(app)` defines it; this
#: order is `genpipe --help`'s. A command's module is imported only when that command runs
#: (or for `--help`, which lists them all): `genpipe run` never imports the stack's,
#: cluster's or registry's modules (tests/genpipe/cli/test_cli_lazy.py holds this table to
#: what the modules define).
COMMANDS = {
    "up": "stack",
    "down": "stack",
    "status": "stack",
    "env": "stack",
    "models": "pipeline",
    "run": "pipeline",
    "compile": "pipeline",
    "generate": "generate",
    "submit": "cluster",
    "schedule": "cluster",
    "pull": "registry",
    "serve": "registry",
    "deploy": "registry",
    "gc": "gc",
    "schedules": "cluster",
    "images": "images",
}
#: one module per noun, in `genpipe --help`'s order
NOUNS = tuple(dict.fromkeys(COMMANDS.values()))


class _Commands(MutableMapping[str, Any]):
    """The app's click commands by name: every name of COMMANDS is listed, and a command is
    built (its module imported and registered) the first time it is looked up."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def _build(self, noun: str) -> None:
        sub = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        importlib.import_module(f"genpipe.cli.{noun}").register(sub)
        for name, command in typer.main.get_group(sub).commands.items():
            fast_coercion(command)  # no pydantic import for values that need no coercion
            self._built.setdefault(name, command)

    def __getitem__(self, name: str) -> Any:
        if name not in self._built and name in COMMANDS:
            self._build(COMMANDS[name])
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*COMMANDS, *(n for n in self._built if n not in COMMANDS)])

    def __len__(self) -> int:
        return len(COMMANDS.keys() | self._built.keys())

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._built

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]


class _LazyGroup(TyperGroup):
    """The `genpipe` group, with its commands built on first use (`_Commands`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands()
        fast_coercion(self, subcommands=False)  # --debug


app = typer.Typer(
    name="genpipe",
    help="Train generative models as Kubeflow Pipelines tracked in MLflow - on a cluster or on a laptop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_LazyGroup,
)
_state = {"debug": False}


def _console() -> Any:
    """stderr's rich Console, made when there is something to say (rich takes ~0.05 s to import)."""
    from rich.console import Console

    return Console(stderr=True)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def quiet_libraries(what: str) -> Iterator[Path]:
    """Keep TensorFlow's and MLflow's chatter out of a command's output, in a log instead.

    TensorFlow's C++ logging writes to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says
    (absl's "All log messages before absl::InitializeLog()", oneDNN notices), and MLflow
    warns through `warnings` and `logging`. Inside this block fd 2 is the log file, while
    Python's `sys.stderr` (our own lines: errors, "waiting for ..." notices) stays the
    terminal; library warnings and log records go to the log. Yields the log's path.
    """
    import logging
    import time
    import warnings

    from zoo.settings import state_dir

    logs = state_dir() / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{what}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    except OSError:  # no writable state dir: a private temp file
        import tempfile

        fd, name = tempfile.mkstemp(prefix=f"genpipe-{what}-", suffix=".log")
        path, log = Path(name), os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding)
    saved_fd2 = os.dup(2)
    os.dup2(log.fileno(), 2)
    saved_stderr, saved_showwarning = sys.stderr, warnings.showwarning
    sys.stderr = terminal

    def to_log(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = to_log
    handler = logging.StreamHandler(log)
    saved_loggers: dict[str, tuple[list[logging.Handler], bool]] = {}

    def route_library_logs() -> None:
        # After the libraries' imports: MLflow installs its own stderr handler on import.
        for name in ("mlflow", "tensorflow", "absl", "keras", "py.warnings"):
            lg = logging.getLogger(name)
            saved_loggers.setdefault(name, (lg.handlers[:], lg.propagate))
            lg.handlers, lg.propagate = [handler], False

    import mlflow  # noqa: F401  (its import configures its loggers: route them afterwards)

    route_library_logs()
    try:
        yield path
    finally:
        for name, (handlers, propagate) in saved_loggers.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
        warnings.showwarning = saved_showwarning
        sys.stderr = saved_stderr
        terminal.flush()
        terminal.close()
        os.dup2(saved_fd2, 2)
        os.close(saved_fd2)
        log.close()


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
        _console().print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:  # Ctrl-C or a declined prompt
        _console().print("Aborted.")
        sys.exit(1)
    except _click_errors() as e:  # bad option, unknown command: click's usage message
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    if isinstance(rc, int) and not isinstance(rc, bool) and rc:
        sys.exit(rc)


def entry() -> None:
    """The `genpipe` program: `main()`, then a quick exit.

    The command is done and has flushed what it wrote; this skips the interpreter's
    teardown (freeing every module: ~0.05 s for the CLI's own imports, seconds once a command
    loaded TensorFlow), where there is nothing to clean up: the stack's servers are detached,
    task processes are reaped. The atexit handlers still run, except with TensorFlow loaded
    (as before: its own take seconds); with a non-daemon thread still running (nothing of
    ours leaves one) the exit is Python's own, which waits for it. In-process callers
    (tests) use `main()`, which returns normally.
    """
    import atexit
    import threading

    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if any(not t.daemon for t in others) or (
        "tensorflow" not in sys.modules and run_exitfuncs is None
    ):
        sys.exit(code)
    if "tensorflow" not in sys.modules and run_exitfuncs is not None:
        run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
