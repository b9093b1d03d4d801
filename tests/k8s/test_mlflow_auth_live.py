"""The in-cluster MLflow of k8s/base, run for real: PostgreSQL + `mlflow server` with exactly the
Deployment's command, arguments, auth config and init script (only the addresses changed to
loopback), then the genpipe-mlflow-users Job's script. Checks that nobody gets in without
credentials, that the Job makes a working NON-admin pipelines user idempotently, and that the
auth store lives in its own database.

Needs PostgreSQL's server binaries (initdb, postgres: Debian's postgresql package) and
psycopg2-binary (the `test` extra), as the genpipe image has.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_manifests import K8S, find, overlay, pod_spec  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql")
CLUSTER_PG = "postgres.genpipe.svc.cluster.local:5432"
PG_PASSWORD = "fake-pg-password-for-test"
ADMIN = ("genpipe-admin", "fake-admin-password-0123456789")
FLASK_KEY = "fake-flask-secret-key-0123456789abcdef"
USER = ("genpipe-pipelines", "fake-pipelines-password-0123")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_tool(name: str) -> str:
    """initdb/postgres from Debian's postgresql package (not on PATH), else PATH."""
    found = sorted(PG_BIN.glob(f"*/bin/{name}")) or [Path(p) for p in [shutil.which(name)] if p]
    assert found, f"PostgreSQL's {name} not found: apt-get install postgresql"
    return str(found[-1])


def _as_postgres_user() -> dict[str, Any]:
    """PostgreSQL refuses to run as root (CI runs as root): drop to the `postgres` user."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command/args from the container's env."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _container_env(container: dict[str, Any], values: dict[tuple[str, str], str]) -> dict[str, str]:
    """The env a container gets: literal values, and Secret/ConfigMap refs from `values`."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"]["configMapKeyRef"]
        env[e["name"]] = values[(ref["name"], ref["key"])]
    return env


def _request(
    base: str, method: str, path: str, auth: tuple[str, str] | None, body: dict | None = None
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"text": raw.decode(errors="replace")}


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on loopback with user `mlflow` and database `mlflow`, as the
    StatefulSet's POSTGRES_USER/POSTGRES_DB create them."""
    # Not under pytest's tmp dir: that is 0700 root's, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="genpipe-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    sudo = _as_postgres_user()
    subprocess.run(
        [_pg_tool("initdb"), "-D", str(data), "-U", "mlflow", "--pwfile", str(pwfile)]
        + ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **sudo,
    )
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [_pg_tool("postgres"), "-D", str(data), "-p", str(port)]
        + ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        **sudo,
    )
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "mlflow"}
    env["PGPASSWORD"] = PG_PASSWORD
    deadline = time.monotonic() + 60
    while subprocess.run(["pg_isready", "-q"], env=env).returncode != 0:
        assert proc.poll() is None, (root / "postgres.log").read_text()
        assert time.monotonic() < deadline, "PostgreSQL did not start"
        time.sleep(0.3)
    subprocess.run(["psql", "-d", "postgres", "-c", "CREATE DATABASE mlflow"], env=env, check=True)
    try:
        yield {"port": port, "env": env}
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _psql(pg: dict[str, Any], db: str, sql: str) -> str:
    res = subprocess.run(
        ["psql", "-d", db, "-tAc", sql], env=pg["env"], capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` as the Deployment runs it, on loopback, after its init container."""
    objs = overlay("cpu")
    spec = pod_spec(find(objs, "Deployment", "mlflow"))
    cm = find(objs, "ConfigMap", "genpipe-config", "genpipe")["data"]
    pg_addr = f"127.0.0.1:{postgres['port']}"
    values = {
        ("genpipe-postgres", "POSTGRES_PASSWORD"): PG_PASSWORD,
        ("genpipe-mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME"): ADMIN[0],
        ("genpipe-mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD"): ADMIN[1],
        ("genpipe-mlflow-admin", "MLFLOW_FLASK_SERVER_SECRET_KEY"): FLASK_KEY,
        ("genpipe-s3-mlflow", "AWS_ACCESS_KEY_ID"): "fake-mlflow-access",
        ("genpipe-s3-mlflow", "AWS_SECRET_ACCESS_KEY"): "fake-mlflow-secret",
        **{("genpipe-config", k): v for k, v in cm.items()},
    }
    # The init container's script, twice: it must be idempotent (every pod start runs it).
    (init,) = spec["initContainers"]
    init_env = _container_env(init, values) | {"PGHOST": "127.0.0.1"}
    init_env["PGPORT"] = str(postgres["port"])
    for _ in range(2):
        subprocess.run(
            init["command"] + init["args"], env={**os.environ, **init_env}, check=True, timeout=60
        )

    (c,) = spec["containers"]
    env = _container_env(c, values)
    work = tmp_path_factory.mktemp("mlflow")
    ini_text = find(objs, "ConfigMap", "genpipe-mlflow-auth")["data"]["basic_auth.ini"]
    ini = work / "basic_auth.ini"
    ini.write_text(ini_text.replace(CLUSTER_PG, pg_addr))
    mount = next(m for m in c["volumeMounts"] if m["name"] == "auth-config")
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == f"{mount['mountPath']}/basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    env["HOME"] = str(work)
    port = _free_port()
    args = []
    for a in (_expand(a, env) for a in c["args"]):
        a = a.replace(CLUSTER_PG, pg_addr).replace("--host=0.0.0.0", "--host=127.0.0.1")
        a = a.replace("--port=5000", f"--port={port}")
        if a.startswith("--allowed-hosts="):  # what a port-forward to this port would send
            a += f",127.0.0.1:{port}"
        args.append(a)
    assert c["command"] == ["mlflow", "server"]
    cmd = [sys.executable, "-m", "mlflow", "server", *args]
    log = open(work / "mlflow.log", "wb")  # noqa: SIM115 (closed at teardown)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    proc = subprocess.Popen(
        cmd, env={**clean, **env}, cwd=work, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, (work / "mlflow.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        assert time.monotonic() < deadline, (work / "mlflow.log").read_text()[-3000:]
        time.sleep(0.5)
    try:
        yield {"base": base, "values": values, "log": work / "mlflow.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_users_job(server: dict[str, Any], user: tuple[str, str]) -> subprocess.CompletedProcess:
    """The genpipe-mlflow-users Job's container: its command, on the script from its ConfigMap."""
    objs = overlay("cpu")
    (c,) = pod_spec(find(objs, "Job", "genpipe-mlflow-users"))["containers"]
    script = find(objs, "ConfigMap", "genpipe-mlflow-users")["data"]["mlflow-users.py"]
    assert script == (K8S / "base" / "mlflow-users.py").read_text()
    values = server["values"] | {
        ("genpipe-mlflow", "MLFLOW_TRACKING_USERNAME"): user[0],
        ("genpipe-mlflow", "MLFLOW_TRACKING_PASSWORD"): user[1],
    }
    env = _container_env(c, values)
    env["MLFLOW_TRACKING_URI"] = server["base"]
    assert c["command"][0] == "python" and c["command"][1] == "/scripts/mlflow-users.py"
    return subprocess.run(
        [sys.executable, str(K8S / "base" / "mlflow-users.py")],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_in_cluster_mlflow_requires_auth_and_the_job_makes_a_non_admin_user(
    mlflow_server, postgres
):
    base = mlflow_server["base"]
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    # No credentials, wrong credentials: nothing.
    assert _request(base, "GET", search, None)[0] == 401
    assert _request(base, "GET", search, (ADMIN[0], "wrong-password-123"))[0] == 401
    assert _request(base, "GET", "/health", None)[0] == 200  # the probes' path stays open

    # The Job creates the pipelines user, then re-running it is a no-op update.
    first = _run_users_job(mlflow_server, USER)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    again = _run_users_job(mlflow_server, USER)
    assert again.returncode == 0 and "updated" in again.stdout, again.stderr

    status, got = _request(base, "GET", f"/api/2.0/mlflow/users/get?username={USER[0]}", ADMIN)
    assert status == 200 and got["user"]["is_admin"] is False
    status, got = _request(base, "GET", f"/api/2.0/mlflow/users/get?username={ADMIN[0]}", ADMIN)
    assert status == 200 and got["user"]["is_admin"] is True

    # What a pipeline does works as that user: experiment, run, metric, registered model.
    status, got = _request(
        base, "POST", "/api/2.0/mlflow/experiments/create", USER, {"name": "genpipe-vae"}
    )
    assert status == 200, got
    exp = got["experiment_id"]
    status, got = _request(
        base, "POST", "/api/2.0/mlflow/runs/create", USER, {"experiment_id": exp}
    )
    assert status == 200, got
    run_id = got["run"]["info"]["run_id"]
    status, _ = _request(
        base,
        "POST",
        "/api/2.0/mlflow/runs/log-metric",
        USER,
        {"run_id": run_id, "key": "loss", "value": 1.5, "timestamp": 0, "step": 0},
    )
    assert status == 200
    status, got = _request(
        base, "POST", "/api/2.0/mlflow/registered-models/create", USER, {"name": "vae"}
    )
    assert status == 200, got

    # ...but it is no admin: no user management, nothing of others (default NO_PERMISSIONS).
    status, _ = _request(
        base,
        "POST",
        "/api/2.0/mlflow/users/create",
        USER,
        {"username": "intruder", "password": "intruder-password-1"},
    )
    assert status == 403
    status, got = _request(
        base, "POST", "/api/2.0/mlflow/experiments/create", ADMIN, {"name": "admin-only"}
    )
    assert status == 200, got
    private = got["experiment_id"]
    assert (
        _request(base, "GET", f"/api/2.0/mlflow/experiments/get?experiment_id={private}", USER)[0]
        == 403
    )

    # Rotating the Secret and re-running the Job applies the new password.
    rotated = (USER[0], "rotated-pipelines-password-42")
    res = _run_users_job(mlflow_server, rotated)
    assert res.returncode == 0, res.stderr
    assert _request(base, "GET", search, USER)[0] == 401
    assert _request(base, "GET", search, rotated)[0] == 200

    # The auth store has its own database on the same server, apart from the tracking schema.
    assert _psql(postgres, "mlflow_auth", "SELECT count(*) FROM users") == "2"
    assert _psql(postgres, "mlflow", "SELECT to_regclass('public.users') IS NULL") == "t"
    assert _psql(postgres, "mlflow", "SELECT count(*) FROM experiments") != "0"


def test_users_job_refuses_the_admin_as_pipelines_user(mlflow_server):
    res = _run_users_job(mlflow_server, (ADMIN[0], "another-password-123"))
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "is the admin" in res.stderr
    res = _run_users_job(mlflow_server, ("genpipe-pipelines", "short"))
    assert res.returncode == 1 and "at least 12 characters" in res.stderr
