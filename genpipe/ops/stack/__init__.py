"""The embedded stack: a real SeaweedFS S3 server and a real MLflow tracking server on 127.0.0.1.

`genpipe up` starts both as detached processes whose state lives under one directory
(`zoo.settings.state_dir()` unless given):

    STATE/stack.json         chosen ports, so `status` / `down` / `env` find the stack
    STATE/credentials.json   S3 access/secret key (mode 0600), generated on the first `up`
    STATE/s3.json            SeaweedFS identities built from it (mode 0600)
    STATE/seaweedfs-security/  SeaweedFS JWT keys and gRPC mTLS CA + certificate, new at
                             every start of SeaweedFS (see `seaweedfs._write_weed_security`)
    STATE/seaweedfs/         SeaweedFS master, volume and filer data
    STATE/run/               SeaweedFS's local Unix sockets
    STATE/mlflow.db          MLflow backend store (sqlite, write-ahead log: mlflow.db-wal/-shm)
    STATE/mlflow-auth.json   MLflow's admin user and 256-bit password (mode 0600), generated on
                             the first `up`; every MLflow request must carry them (Basic auth,
                             checked by `genpipe.ops.mlflow_auth`)
    STATE/mlflow-auth.ini    MLflow auth app config; STATE/mlflow-auth.db its user database
    STATE/logs/*.log         server output, quoted in errors
    STATE/*.pid              process ids (each the leader of its own process group)

It is 0700 and what the stack writes in it owner-only (`statedir.make_private`; weed alone
chmods its volume info files `*.vif` 0644).

MLflow serves artifacts as a proxy (`mlflow-artifacts:/` URIs) onto
s3://genpipe-mlflow/artifacts on the same SeaweedFS, so clients need only MLFLOW_TRACKING_URI
for tracking, while data and checkpoints go straight to the `genpipe` bucket.

This module is the stack's lifecycle (`up`, `down`, `status`, `env`); its rooms:
`statedir` (ports, keys, lock, pid and log files), `processes` (start, find, stop a server),
`seaweedfs` and `mlflow_server` (each server's command line, config and health).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from genpipe.ops.stack import mlflow_server, seaweedfs
from genpipe.ops.stack.mlflow_server import MLFLOW_ARTIFACTS, MLFLOW_BUCKET
from genpipe.ops.stack.processes import running_pid, stop, wait_ready
from genpipe.ops.stack.statedir import (
    GRPC_OFFSET,
    HOST,
    MLFLOW,
    WEED,
    Credentials,
    PortInUseError,
    Ports,
    check_port_free,
    credentials,
    load_ports,
    lock,
    log_path,
    pid_file,
    save_ports,
    state_path,
)
from zoo import settings
from zoo.errors import StackError
from zoo.ports import free_ports as pick_ports

__all__ = [
    "DEFAULT_TIMEOUT",
    "GRPC_OFFSET",
    "HOST",
    "MLFLOW",
    "MLFLOW_ARTIFACTS",
    "MLFLOW_BUCKET",
    "WEED",
    "Credentials",
    "PortInUseError",
    "Ports",
    "ServiceStatus",
    "StackInfo",
    "credentials",
    "down",
    "ensure_up",
    "env",
    "free_ports",
    "load_ports",
    "status",
    "up",
]

DEFAULT_TIMEOUT = 90.0  # MLflow alone needs ~10 s to import on an idle 2-core machine


@dataclass(frozen=True)
class ServiceStatus:
    """One server of the stack as found by `status()`."""

    name: str
    pid: int | None  # None: not running (or not started by this state dir)
    port: int
    url: str
    healthy: bool
    log: Path


@dataclass(frozen=True)
class StackInfo:
    """The stack of one state directory: ports and per-service status. Holds no secrets."""

    state_dir: Path
    ports: Ports
    services: tuple[ServiceStatus, ...]

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.services)

    def service(self, name: str) -> ServiceStatus:
        return next(s for s in self.services if s.name == name)


def env(state_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Client environment for this stack (what `eval $(genpipe env)` exports)."""
    state = state_path(state_dir)
    ports = load_ports(state)
    if ports is None:
        raise StackError(f"no embedded stack in {state}: run `genpipe up` first")
    creds = credentials(state)
    return {
        settings.ENV_S3_ENDPOINT: f"http://{HOST}:{ports.s3}",
        settings.ENV_ACCESS_KEY: creds.access_key,
        settings.ENV_SECRET_KEY: creds.secret_key,
        settings.ENV_BUCKET: settings.DEFAULT_BUCKET,
        settings.ENV_MLFLOW_URI: f"http://{HOST}:{ports.mlflow}",
        **mlflow_server.client_env(state),
    }


def status(state_dir: str | os.PathLike[str] | None = None) -> StackInfo:
    """Per-service pid, port and real health (authenticated S3 ListBuckets, MLflow /health)."""
    state = state_path(state_dir)
    ports = load_ports(state) or Ports()
    try:
        creds: Credentials | None = credentials(state)
    except StackError:
        creds = None
    weed_pid = running_pid(state, WEED)
    mlflow_pid = running_pid(state, MLFLOW)
    return StackInfo(
        state_dir=state,
        ports=ports,
        services=(
            ServiceStatus(
                name=WEED,
                pid=weed_pid,
                port=ports.s3,
                url=f"http://{HOST}:{ports.s3}",
                healthy=bool(weed_pid and creds and seaweedfs.healthy(ports, creds)),
                log=log_path(state, WEED),
            ),
            ServiceStatus(
                name=MLFLOW,
                pid=mlflow_pid,
                port=ports.mlflow,
                url=f"http://{HOST}:{ports.mlflow}",
                healthy=bool(mlflow_pid and mlflow_server.healthy(ports)),
                log=log_path(state, MLFLOW),
            ),
        ),
    )


def up(
    state_dir: str | os.PathLike[str] | None = None,
    ports: Ports | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> StackInfo:
    """Start whatever part of the stack is not running; a no-op when all is healthy.

    `ports` defaults to those saved by the last `up` in this state dir, else `Ports()`.
    MLflow always requires the stack's credentials (generated once, exported by `env()`); an
    MLflow that an older version started without them, or under uvicorn, is restarted.
    Raises StackError (PortInUseError for a taken port) with the server log on failure.
    """
    state = state_path(state_dir)
    with lock(state):
        mlflow_server.enable_auth(state)
        stale = running_pid(state, MLFLOW)
        if stale and not mlflow_server.current(state, stale):
            # Without our auth anyone local could use (and replace models in) that one; one
            # under uvicorn costs every request ~5-15 ms more.
            stop(stale, 30.0)
            pid_file(state, MLFLOW).unlink(missing_ok=True)
        saved = load_ports(state)
        ports = ports or saved or Ports()
        ports.validate()
        current = status(state)
        running = {s.name: s.pid for s in current.services if s.pid}
        if running and saved and saved != ports:
            raise StackError(
                f"the stack in {state} already runs on other ports ({saved}): "
                "run `genpipe down` first to change them"
            )
        if current.healthy:
            return current
        creds = credentials(state, create=True)
        # Check every port of every service we are about to start before starting any,
        # so a conflict leaves nothing half-started.
        for port, what, option in ports.listening():
            is_mlflow = what.startswith("MLflow")
            if not running.get(MLFLOW if is_mlflow else WEED):
                check_port_free(port, what, option)
        save_ports(state, ports)

        weed_pid = running.get(WEED) or seaweedfs.start(state, ports, creds)
        wait_ready(state, WEED, weed_pid, lambda: seaweedfs.healthy(ports, creds), timeout)
        seaweedfs.ensure_buckets(ports, creds, (settings.DEFAULT_BUCKET, MLFLOW_BUCKET), timeout)

        mlflow_pid = running.get(MLFLOW) or mlflow_server.start(state, ports, creds)
        wait_ready(state, MLFLOW, mlflow_pid, lambda: mlflow_server.healthy(ports), timeout)
        return status(state)


def down(state_dir: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> list[str]:
    """Stop the stack's servers (SIGTERM, SIGKILL after `timeout`); returns what was stopped."""
    state = state_path(state_dir)
    if not state.exists():
        return []
    stopped = []
    with lock(state):
        for name in (MLFLOW, WEED):  # MLflow first: it writes artifacts to SeaweedFS
            pid = running_pid(state, name)
            if pid:
                stop(pid, timeout)
                stopped.append(name)
                if name == WEED:  # our weed held these ports, so the sockets were its own
                    seaweedfs.remove_sockets(state, load_ports(state) or Ports())
                else:
                    mlflow_server.checkpoint(state / "mlflow.db")
            pid_file(state, name).unlink(missing_ok=True)
    return stopped


def ensure_up(
    state_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, str]:
    """Start the stack unless it is healthy; return its client environment (see `env`)."""
    if not status(state_dir).healthy:
        up(state_dir, timeout=timeout)
    return env(state_dir)


def free_ports(low: int = 15000, high: int = 22000) -> Ports:
    """Pick currently free ports (and free gRPC ports + 10000) for a throw-away stack.

    The range keeps port + 10000 below Linux's ephemeral range (32768+), where outgoing
    connections could grab it between this check and the server's bind (see `zoo.ports`).
    """
    # gap 2: no two services on neighbouring ports (as before the picker moved to zoo.ports)
    chosen = pick_ports(len(fields(Ports)), low, high, offsets=(0, GRPC_OFFSET), gap=2)
    return Ports(**{f.name: p for f, p in zip(fields(Ports), chosen, strict=True)})
