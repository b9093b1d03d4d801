"""The stack's MLflow server process: gunicorn serving the Flask app (not uvicorn + FastAPI,
~5-15 ms more per request), its Host guard, its listeners, its sqlite journal, and `up`
replacing one that an older version started under uvicorn.

Linux: the tests read /proc for the server's process group, its environment and its sockets.
The test that restarts the session's MLflow is last in this file.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from genpipe.ops import stack as zstack
from genpipe.ops.stack import mlflow_server, processes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _group(pgid: int) -> dict[int, list[str]]:
    """Every live process of the process group `pgid` (the server and its children): argv."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                argv = (stat.parent / "cmdline").read_bytes().decode().split("\0")[:-1]
                found[int(stat.parent.name)] = argv
    return found


def _mlflow_group(stack) -> dict[int, list[str]]:
    pid = zstack.status(stack.state_dir).service("mlflow").pid
    assert pid is not None
    return _group(pid)


def _request(stack, path: str, host: str | None = None, auth: bool = True) -> int:
    headers = {"Host": host} if host else {}
    if auth:
        user, pw = stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
    req = urllib.request.Request(stack.env["MLFLOW_TRACKING_URI"] + path, headers=headers)
    try:
        with _DIRECT.open(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        with e:
            return e.code


API = "/api/2.0/mlflow/experiments/search?max_results=1"
ARTIFACT = "/api/2.0/mlflow-artifacts/artifacts/0/none.txt"


def _gunicorn(group: dict[int, list[str]]) -> list[int]:
    return [pid for pid, argv in group.items() if argv[1:3] == ["-m", "gunicorn"]]


def test_mlflow_runs_under_gunicorn_with_one_worker(stack) -> None:
    group = _mlflow_group(stack)
    assert not [a for a in group.values() if "uvicorn" in " ".join(a)], group
    gunicorn = _gunicorn(group)
    assert len(gunicorn) == 2, group  # the master and its one worker
    opts = mlflow_server.GUNICORN_OPTS.split()
    for pid in gunicorn:
        assert group[pid][3 : 3 + len(opts)] == opts


def test_mlflow_listens_on_its_port_only(stack) -> None:
    """No gunicorn control socket (its default ~/.gunicorn/gunicorn.ctl would be a listener
    that every stack of the user shares), no other port."""
    inodes = set()
    for pid in _mlflow_group(stack):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    unix_bound = [
        line.split()[7]
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]
        if len(line.split()) > 7 and line.split()[6] in inodes
    ]
    assert unix_bound == []
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                listening.add(int(cols[1].rsplit(":", 1)[1], 16))
    assert listening == {zstack.load_ports(stack.state_dir).mlflow}
    assert not (Path.home() / ".gunicorn" / "gunicorn.ctl").exists()


def test_mlflow_refuses_other_hosts_on_api_and_artifacts(stack) -> None:
    """DNS-rebinding guard (the Flask app's Host check, set through the environment)."""
    port = zstack.load_ports(stack.state_dir).mlflow
    assert _request(stack, API) == 200
    assert _request(stack, API, host=f"localhost:{port}") == 200
    for path in (API, ARTIFACT):
        assert _request(stack, path, host="evil.example:80") == 403
        assert _request(stack, path, host=f"evil.example:{port}") == 403
        assert _request(stack, path, auth=False) == 401


def test_the_store_is_a_write_ahead_log(stack) -> None:
    """A commit appends to mlflow.db-wal instead of rewriting pages through a rollback journal:
    set_tag/log_metric/log_batch 2-3x faster."""
    db = stack.state_dir / "mlflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stalled_clients_leave_threads_for_others(stack) -> None:
    """A connection that sends part of a request holds a gunicorn thread until it hangs up:
    16 of them (twice a task's concurrent uploads) still leave the server answering."""
    port = zstack.load_ports(stack.state_dir).mlflow
    with contextlib.ExitStack() as stalled:
        for _ in range(16):
            sock = stalled.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        time.sleep(0.5)  # each is in a thread's blocking read by now
        start = time.monotonic()
        assert _request(stack, API) == 200
        assert time.monotonic() - start < 20


# ------------------------------------------------------------------ last: restart


def test_up_replaces_an_mlflow_that_an_older_version_started(stack, monkeypatch) -> None:
    """One under uvicorn (`--allowed-hosts`) on a rollback-journal store: `up` restarts it under
    gunicorn, the store becomes a WAL, its data stays, and a shell's setting that would turn
    off the Host guard does not reach the new server."""
    state, ports = stack.state_dir, zstack.load_ports(stack.state_dir)
    experiment = MlflowClient().create_experiment(f"kept-{uuid.uuid4().hex[:8]}")
    processes.stop(zstack.status(state).service("mlflow").pid, 30.0)
    with contextlib.closing(sqlite3.connect(state / "mlflow.db")) as con:
        assert con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    old = mlflow_server.command(state, ports)
    at = old.index("--gunicorn-opts")
    old[at : at + 2] = ["--allowed-hosts", f"127.0.0.1:{ports.mlflow},localhost:{ports.mlflow}"]
    creds = zstack.credentials(state)
    pid = processes.spawn(state, "mlflow", old, mlflow_server.environment(state, ports, creds))
    processes.wait_ready(state, "mlflow", pid, lambda: mlflow_server.healthy(ports), 120)
    assert not _gunicorn(_group(pid))

    monkeypatch.setenv("MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE", "true")
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "*")
    info = zstack.up(state)
    new = info.service("mlflow").pid
    assert info.healthy and new != pid and not processes.alive(pid)
    assert len(_gunicorn(_group(new))) == 2
    test_the_store_is_a_write_ahead_log(stack)
    assert _request(stack, API, host="evil.example:80") == 403
    assert MlflowClient().get_experiment(experiment).experiment_id == experiment
    quoted = urllib.parse.quote(experiment)
    assert _request(stack, f"/api/2.0/mlflow/experiments/get?experiment_id={quoted}") == 200
