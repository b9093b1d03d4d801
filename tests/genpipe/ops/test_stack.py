"""The embedded stack against real servers: SeaweedFS S3 + MLflow started by the `stack` fixture.

The test that stops and restarts the shared stack is last in this file on purpose; tests
that need their own state dir only check what happens before any server starts.
"""

from __future__ import annotations

import base64
import io
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error
from typer.testing import CliRunner

from genpipe.cli import app
from genpipe.ops import stack as zstack
from genpipe.ops.stack import processes
from tests.as_user import NOBODY, can_switch_user, run_as
from zoo.errors import StackError
from zoo.ports import port_free
from zoo.settings import DEFAULT_BUCKET
from zoo.storage import ObjectStore

runner = CliRunner()


def _s3_host(env: dict[str, str]) -> str:
    return env["GENPIPE_S3_ENDPOINT"].removeprefix("http://")


def _pids(info: zstack.StackInfo) -> dict[str, int | None]:
    return {s.name: s.pid for s in info.services}


def _pgid(stat: Path) -> int | None:
    """The process group of /proc/PID/stat's process (None: gone meanwhile)."""
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


# ------------------------------------------------------------------ lifecycle


def test_status_reports_every_service_healthy(stack) -> None:
    info = zstack.status(stack.state_dir)
    assert info.healthy
    assert {s.name for s in info.services} == {"seaweedfs", "mlflow"}
    assert all(isinstance(s.pid, int) for s in info.services)
    assert info.service("seaweedfs").url == stack.env["GENPIPE_S3_ENDPOINT"]
    assert info.service("mlflow").url == stack.env["MLFLOW_TRACKING_URI"]
    assert "secret" not in repr(info).lower()


def test_up_is_idempotent(stack) -> None:
    before = _pids(zstack.status(stack.state_dir))
    started = time.monotonic()
    again = zstack.up(stack.state_dir)
    assert time.monotonic() - started < 5  # nothing was started
    assert _pids(again) == before
    assert zstack.ensure_up(stack.state_dir) == stack.env
    assert _pids(zstack.status(stack.state_dir)) == before


def test_up_refuses_to_move_a_running_stack(stack) -> None:
    ports = zstack.load_ports(stack.state_dir)
    with pytest.raises(StackError, match="genpipe down"):
        zstack.up(stack.state_dir, ports=replace(ports, mlflow=ports.mlflow + 1))


def test_env_names_the_client_variables(stack) -> None:
    env = zstack.env(stack.state_dir)
    assert set(env) == {
        "GENPIPE_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GENPIPE_BUCKET",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    assert env["GENPIPE_BUCKET"] == DEFAULT_BUCKET
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")


def test_secrets_are_owner_only(stack) -> None:
    for name in ("credentials.json", "s3.json", "mlflow-auth.json", "mlflow-auth.ini"):
        mode = stat.S_IMODE((stack.state_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    creds = zstack.credentials(stack.state_dir)
    assert creds.secret_key not in repr(creds)


def _read_as_nobody(paths: list[str]) -> dict[str, str]:
    out = {}
    for path in paths:
        try:
            out[path] = f"listed {os.listdir(path)}" if os.path.isdir(path) else "read"
            if not os.path.isdir(path):
                with open(path, "rb") as f:
                    f.read(1)
        except OSError as e:
            out[path] = e.strerror or str(e)
    return out


# Written by pipeline runs (GENPIPE_HOME may be the stack's state dir), not by the stack.
RUN_OUTPUTS = ("kfp-local", "runs")


def test_everything_in_the_state_dir_is_owner_only(stack) -> None:
    """MLflow's sqlite store was 0644; logs, pid files and weed's data were group/world-readable."""
    state = stack.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "mlflow.db").stat().st_mode) == 0o600
    loose = [
        f"{p.relative_to(state)} {oct(stat.S_IMODE(p.lstat().st_mode))}"
        for p in state.rglob("*")
        if not p.is_symlink()
        and p.lstat().st_mode & 0o077
        and p.relative_to(state).parts[0] not in RUN_OUTPUTS
        and not p.name.startswith("run-")  # logs/run-*.log: the runs' own logs
        # weed chmods its volume info files (version, replication) 0644 whatever the umask
        # when it grows a volume; the 0700 dir keeps them from others all the same
        and p.suffix != ".vif"
    ]
    assert loose == []
    if can_switch_user():  # and another user gets nothing out of it
        targets = [str(state), str(state / "mlflow.db"), str(state / "credentials.json")]
        got = run_as(NOBODY, _read_as_nobody, targets)
        assert got == dict.fromkeys(targets, "Permission denied"), got
    # what an older version (or a loose umask) left is tightened by the next up/down
    old = state / "logs" / "old.log"
    old.write_text("x")
    old.chmod(0o644)
    zstack.up(state)
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    old.unlink()


# ------------------------------------------------------------------ S3


def test_s3_refuses_wrong_and_missing_credentials(stack) -> None:
    host = _s3_host(stack.env)
    key = stack.env["AWS_ACCESS_KEY_ID"]
    wrong_secret = Minio(host, access_key=key, secret_key="x" * 40, secure=False)
    unknown_key = Minio(host, access_key="GPNOBODY", secret_key="x" * 40, secure=False)
    anonymous = Minio(host, secure=False)
    for client in (wrong_secret, unknown_key, anonymous):
        with pytest.raises(S3Error) as e:
            client.list_buckets()
        assert e.value.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
        with pytest.raises(S3Error):
            list(client.list_objects(DEFAULT_BUCKET))
        with pytest.raises(S3Error):
            client.put_object(DEFAULT_BUCKET, "intruder.txt", io.BytesIO(b"x"), 1)
    # A plain unsigned HTTP GET (a browser, curl) is refused as well.
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(f"{stack.env['GENPIPE_S3_ENDPOINT']}/{DEFAULT_BUCKET}/", timeout=5)
    assert http.value.code == 403
    http.value.close()


def test_object_store_round_trip(store: ObjectStore) -> None:
    prefix = store.uri(f"tests/stack/{uuid.uuid4().hex}")
    store.put_bytes(f"{prefix}/a.bin", b"\x00\x01payload")
    store.put_json(f"{prefix}/sub/meta.json", {"epoch": 3, "loss": 0.25})
    assert store.get_bytes(f"{prefix}/a.bin") == b"\x00\x01payload"
    assert store.get_json(f"{prefix}/sub/meta.json") == {"epoch": 3, "loss": 0.25}
    assert sorted(store.list(prefix + "/")) == [f"{prefix}/a.bin", f"{prefix}/sub/meta.json"]
    assert store.exists(f"{prefix}/a.bin")
    assert not store.exists(f"{prefix}/missing.bin")
    assert store.delete_prefix(prefix + "/") == 2
    assert list(store.list(prefix + "/")) == []
    assert not store.exists(f"{prefix}/a.bin")


def test_both_buckets_exist(store: ObjectStore) -> None:
    assert store.client.bucket_exists(DEFAULT_BUCKET)
    assert store.client.bucket_exists(zstack.MLFLOW_BUCKET)


# ------------------------------------------------------------------ MLflow


def test_mlflow_run_artifacts_land_in_seaweedfs(stack, store: ObjectStore) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.env["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment(f"test-stack-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "model", "vae")
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.log_text(run.info.run_id, "hello from genpipe", "samples/hello.txt")
    client.set_terminated(run.info.run_id)

    # Proxied: clients talk HTTP to MLflow, which writes to s3://genpipe-mlflow/artifacts.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    keys = list(store.list(f"s3://{zstack.MLFLOW_BUCKET}/artifacts/"))
    key = (
        f"s3://{zstack.MLFLOW_BUCKET}/artifacts/{exp}/{run.info.run_id}/artifacts/samples/hello.txt"
    )
    assert key in keys
    assert store.get_bytes(key) == b"hello from genpipe"
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}


def test_mlflow_rejects_foreign_host_header(stack) -> None:
    """DNS-rebinding guard: only requests addressed to 127.0.0.1/localhost are served."""
    url = f"{stack.env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    basic = base64.b64encode(
        f"{stack.env['MLFLOW_TRACKING_USERNAME']}:{stack.env['MLFLOW_TRACKING_PASSWORD']}".encode()
    ).decode()
    authorization = {"Authorization": f"Basic {basic}"}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=authorization), timeout=10
    ) as ok:
        assert ok.status == 200
    evil = urllib.request.Request(url, headers={**authorization, "Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(evil, timeout=10)
    assert e.value.code in (400, 403)
    e.value.close()


# ------------------------------------------------------------------ no servers needed


def test_port_taken_is_named_with_the_option_to_change_it(tmp_path: Path) -> None:
    ports = zstack.free_ports()
    with _listen(ports.s3):
        with pytest.raises(zstack.PortInUseError) as e:
            zstack.up(tmp_path, ports=ports)
        assert e.value.port == ports.s3
        assert str(ports.s3) in str(e.value) and "--s3-port" in str(e.value)
    # SeaweedFS's gRPC port (port + 10000) is checked too, and named.
    with _listen(ports.filer + zstack.GRPC_OFFSET):
        with pytest.raises(zstack.PortInUseError) as e:
            zstack.up(tmp_path, ports=ports)
        assert str(ports.filer + zstack.GRPC_OFFSET) in str(e.value)
        assert "--filer-port" in str(e.value) and "gRPC" in str(e.value)
    with _listen(ports.mlflow), pytest.raises(zstack.PortInUseError, match="--mlflow-port"):
        zstack.up(tmp_path, ports=ports)
    assert _pids(zstack.status(tmp_path)) == {"seaweedfs": None, "mlflow": None}


def test_bad_port_choices_are_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="used twice"):
        zstack.up(tmp_path, ports=zstack.Ports(s3=18000, mlflow=18000))
    with pytest.raises(StackError, match="out of range"):
        zstack.up(tmp_path, ports=zstack.Ports(s3=60000))
    assert not (tmp_path / "seaweedfs").exists()


def test_env_without_a_stack_says_run_up(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="genpipe up"):
        zstack.env(tmp_path)
    assert zstack.down(tmp_path / "never-created") == []
    assert not zstack.status(tmp_path).healthy


def test_startup_failure_quotes_the_log(tmp_path: Path) -> None:
    pid = processes.spawn(tmp_path, "mlflow", ["sh", "-c", "echo 'boom: bad flag' >&2; exit 3"], {})
    with pytest.raises(StackError, match="(?s)exited during startup.*boom: bad flag"):
        processes.wait_ready(tmp_path, "mlflow", pid, lambda: False, timeout=10)


# ------------------------------------------------------------------ CLI


def test_cli_status_and_env(stack) -> None:
    state = str(stack.state_dir)
    status = runner.invoke(app, ["status", "--state-dir", state])
    assert status.exit_code == 0, status.output
    assert "seaweedfs" in status.output and "mlflow" in status.output
    assert stack.env["AWS_SECRET_ACCESS_KEY"] not in status.output

    up = runner.invoke(app, ["up", "--state-dir", state])
    assert up.exit_code == 0, up.output
    assert stack.env["AWS_SECRET_ACCESS_KEY"] not in up.output

    env = runner.invoke(app, ["env", "--state-dir", state])
    assert env.exit_code == 0, env.output
    exported = {}
    for line in env.stdout.splitlines():
        word, assignment = line.split(" ", 1)
        assert word == "export"
        key, value = assignment.split("=", 1)
        exported[key] = shlex.split(value)[0]
    assert exported == stack.env


def _genpipe(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; sys.argv[0] = 'genpipe'; from genpipe.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    usage = _genpipe("up", "--s3-port", "not-a-port")
    assert usage.returncode == 2
    assert "Invalid value for '--s3-port'" in usage.stderr
    assert "Traceback" not in usage.stderr

    not_running = _genpipe("status", "--state-dir", str(tmp_path))
    assert not_running.returncode == 1
    assert "error: not healthy" in not_running.stderr and "genpipe up" in not_running.stderr
    assert "Traceback" not in not_running.stderr


# ------------------------------------------------------------------ last: restart


def test_down_stops_everything_and_up_keeps_data(stack, store: ObjectStore) -> None:
    uri = store.uri(f"tests/stack/{uuid.uuid4().hex}/kept.txt")
    store.put_bytes(uri, b"survives a restart")
    before = zstack.status(stack.state_dir)
    ports = before.ports
    # every process of each server's group: MLflow's gunicorn master and worker too
    group = [
        int(p.parent.name)
        for s in before.services
        for p in Path("/proc").glob("[0-9]*/stat")
        if _pgid(p) == s.pid
    ]
    assert len(group) >= 4 or sys.platform != "linux"

    # A short timeout also exercises the SIGKILL path (SeaweedFS drains for ~15 s).
    assert zstack.down(stack.state_dir, timeout=2) == ["mlflow", "seaweedfs"]
    after = zstack.status(stack.state_dir)
    assert not any(s.healthy for s in after.services)
    assert _pids(after) == {"seaweedfs": None, "mlflow": None}
    for pid in [s.pid for s in before.services] + group:
        assert not processes.alive(pid)
    # the write-ahead log was folded into mlflow.db: that file alone is the whole store
    assert not (stack.state_dir / "mlflow.db-wal").exists()
    for port, _what, _option in ports.listening():
        assert port_free(port)  # every port was released
    ours = {f"-{port}.sock" for port, _what, _option in ports.listening()}
    assert [
        p for p in Path("/tmp").glob("seaweedfs-*.sock") if p.name[p.name.rfind("-") :] in ours
    ] == []
    assert zstack.down(stack.state_dir) == []  # nothing left to stop

    info = zstack.up(stack.state_dir)  # same ports and keys as before
    assert info.healthy and info.ports == ports
    assert zstack.env(stack.state_dir) == stack.env
    assert ObjectStore.from_env().get_bytes(uri) == b"survives a restart"
