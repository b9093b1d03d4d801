"""`genpipe up | down | status | env`: the embedded stack (SeaweedFS S3 + MLflow) on 127.0.0.1."""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from genpipe.ops.stack import GRPC_OFFSET
from zoo.errors import StackError

out = Console()  # stdout: tables, and `env` lines meant for eval
err = Console(stderr=True)  # progress and hints, so `eval $(genpipe env)` sees only exports

STATE_DIR_HELP = (
    "Directory holding the stack's data, logs, ports and S3 credentials "
    "(default: $GENPIPE_HOME, else ~/.genpipe)."
)


def _state_opt() -> Path | None:
    return typer.Option(None, "--state-dir", help=STATE_DIR_HELP, show_default=False)


def _port_opt(flag: str, what: str, default: int, grpc: bool = True) -> int | None:
    extra = f"; SeaweedFS also binds PORT+{GRPC_OFFSET} for gRPC" if grpc else ""
    return typer.Option(
        None,
        flag,
        help=f"Port of the {what}{extra} (default: the last `up`'s, else {default}).",
        show_default=False,
        min=1024,
        max=65535,
    )


def _table(info) -> Table:  # info: genpipe.ops.stack.StackInfo
    logs = info.services[0].log.parent
    table = Table(title=f"genpipe stack in {info.state_dir} (logs: {logs})", title_justify="left")
    for col in ("service", "pid", "url", "healthy"):
        table.add_column(col, no_wrap=True)
    for s in info.services:
        health = "[green]yes[/green]" if s.healthy else "[red]no[/red]"
        table.add_row(s.name, str(s.pid or "-"), s.url, health)
    return table


def up(
    state_dir: Path | None = _state_opt(),
    s3_port: int | None = _port_opt("--s3-port", "S3 API (what clients use)", 8333),
    mlflow_port: int | None = _port_opt("--mlflow-port", "MLflow tracking server", 5050, False),
    master_port: int | None = _port_opt("--master-port", "SeaweedFS master", 9333),
    volume_port: int | None = _port_opt("--volume-port", "SeaweedFS volume server", 9334),
    filer_port: int | None = _port_opt("--filer-port", "SeaweedFS filer", 8888),
    timeout: float = typer.Option(
        90.0, "--timeout", help="Seconds to wait for each server to become ready.", min=1
    ),
    auth: bool = typer.Option(
        False,
        "--auth",
        hidden=True,  # kept so older scripts still run: MLflow now always authenticates
        help="No effect: MLflow always requires the stack's credentials.",
    ),
) -> None:
    """Start SeaweedFS (S3) and MLflow on 127.0.0.1 (nothing if they already run), and the
    warm task server that later `genpipe run`s fork their tasks from (its imports overlap
    the stack's start; returns once it is ready). Both require the stack's credentials
    (generated once, 0600 files in the state dir): `genpipe env`."""
    from genpipe.ops import stack

    base = stack.load_ports(state_dir) or stack.Ports()
    overrides = {
        "s3": s3_port,
        "mlflow": mlflow_port,
        "master": master_port,
        "volume": volume_port,
        "filer": filer_port,
    }
    ports = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    from pipelines import warm
    from zoo.settings import state_dir as default_state_dir

    home = state_dir or default_state_dir()
    # Started first, so its imports (TensorFlow, MLflow, kfp: ~10 CPU-s) overlap the stack's
    # start; it needs nothing from the stack until a run sends it one.
    warm_started = warm.start_in_background(home)
    if not stack.status(state_dir).healthy:
        err.print("Starting SeaweedFS and MLflow (about 15 s) ...", highlight=False)
    del auth  # accepted, ignored (see its help)
    info = stack.up(state_dir, ports=ports, timeout=timeout)
    out.print(_table(info))
    # Returns once the warm server has preloaded, so the first `genpipe run` after `up`
    # forks its tasks at once instead of waiting for those imports.
    if warm_started:
        t0 = time.monotonic()
        if warm.wait_ready(home, timeout):
            err.print(f"warm task server ready ({time.monotonic() - t0:.1f} s after the stack)")
        else:
            err.print("warm task server not ready: runs will wait for it or run without it")
    err.print("Point clients at it with: [bold]eval $(genpipe env)[/bold]")


def down(
    state_dir: Path | None = _state_opt(),
    timeout: float = typer.Option(
        30.0,
        "--timeout",
        help="Seconds to wait for a clean shutdown before SIGKILL (SeaweedFS drains for ~18 s).",
        min=0,
    ),
) -> None:
    """Stop the embedded stack and every warm task server of the state dir; data and
    credentials stay."""
    from genpipe.ops import stack

    if any(s.pid for s in stack.status(state_dir).services):
        err.print("Stopping (SeaweedFS drains its connections for up to ~18 s) ...")
    stopped = stack.down(state_dir, timeout=timeout)
    from pipelines import warm
    from zoo.settings import state_dir as default_state_dir

    servers = warm.stop_all(state_dir or default_state_dir())  # every code key's, not one
    if servers:
        stopped.append("warm task server" + (f"s ({servers})" if servers > 1 else ""))
    err.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


def status(state_dir: Path | None = _state_opt()) -> None:
    """Show each server's pid, URL and health; exits 1 unless all are healthy."""
    from genpipe.ops import stack

    info = stack.status(state_dir)
    out.print(_table(info))
    if not info.healthy:
        sick = [s.name for s in info.services if not s.healthy]
        hint = "run `genpipe up`" if not any(s.pid for s in info.services) else "see the logs"
        raise StackError(f"not healthy: {', '.join(sick)} ({hint})")


def env(state_dir: Path | None = _state_opt()) -> None:
    """Print `export` lines for the stack's client settings: use `eval $(genpipe env)`.

    This prints the S3 secret key and the MLflow password (that is its purpose); keep the
    output out of logs.
    """
    from genpipe.ops import stack

    values = stack.env(state_dir)
    if not stack.status(state_dir).healthy:
        err.print("[yellow]warning:[/yellow] the stack is not running: run `genpipe up`")
    for key, value in values.items():
        # print() not rich: no markup, wrapping or colour codes inside values.
        print(f"export {key}={shlex.quote(value)}")


def register(app: typer.Typer) -> None:
    """Add the embedded-stack commands to the `genpipe` app."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("env")(env)
