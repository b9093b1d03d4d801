"""The stack's MLflow tracking server: its command line, its auth config and its health.

It serves artifacts as a proxy (`mlflow-artifacts:/` URIs) onto `MLFLOW_ARTIFACTS` on the
stack's SeaweedFS and requires the admin's credentials on every request: the auth app runs
`genpipe.ops.mlflow_auth.authenticate` (named in STATE/mlflow-auth.ini), which checks them
against STATE/mlflow-auth.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path

from genpipe.ops import mlflow_auth, procs
from genpipe.ops.stack.processes import spawn
from genpipe.ops.stack.statedir import HOST, MLFLOW, Credentials, Ports, write_private
from zoo.errors import StackError

MLFLOW_BUCKET = "genpipe-mlflow"
MLFLOW_ARTIFACTS = f"s3://{MLFLOW_BUCKET}/artifacts"


def _auth_path(state: Path) -> Path:
    return state / "mlflow-auth.json"


def client_env(state: Path) -> dict[str, str]:
    """MLflow client credentials (the stack's MLflow always requires them)."""
    path = _auth_path(state)
    if not path.exists():
        return {}  # not started yet: `up` generates them
    auth = json.loads(path.read_text())
    return {
        "MLFLOW_TRACKING_USERNAME": auth["username"],
        "MLFLOW_TRACKING_PASSWORD": auth["password"],
    }


def enable_auth(state: Path) -> None:
    """Generate the admin credentials (once, mode 0600): this stack's MLflow requires them."""
    path = _auth_path(state)
    if not path.exists():
        auth = {
            "username": "admin",
            # 256 random bits: checked with a constant-time compare, no slow hash needed
            # (`genpipe.ops.mlflow_auth`).
            "password": secrets.token_urlsafe(32),
            # Signs the auth app's CSRF tokens; stable across restarts of this stack.
            "flask_secret": secrets.token_urlsafe(36),
        }
        write_private(path, json.dumps(auth) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; a secret stays owner-only


def _auth_ini(state: Path) -> str:
    """The auth app's config: only the admin exists, and `genpipe.ops.mlflow_auth` checks it cheaply."""
    return (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{state / 'mlflow-auth.db'}\n"
        f"admin_username = {client_env(state)['MLFLOW_TRACKING_USERNAME']}\n"
        f"authorization_function = {mlflow_auth.FUNCTION}\n"
    )


def auth_current(state: Path) -> bool:
    """Whether a running MLflow was started with today's auth config (older ones ran none)."""
    ini = state / "mlflow-auth.ini"
    return ini.exists() and ini.read_text() == _auth_ini(state)


def _auth_env(state: Path) -> dict[str, str]:
    """The env of `mlflow server --app-name basic-auth`: nobody but the admin may do anything."""
    enable_auth(state)
    auth = json.loads(_auth_path(state).read_text())
    ini = state / "mlflow-auth.ini"
    write_private(ini, _auth_ini(state))
    # The password goes through the environment and the 0600 file, never the ini file or the
    # command line. The auth db gets the admin (hashed once, at its creation).
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": auth["password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": auth["flask_secret"],
        mlflow_auth.ENV_AUTH_FILE: str(_auth_path(state)),
    }


#: gunicorn serving MLflow's Flask app directly. MLflow's default, uvicorn, runs it behind a
#: FastAPI app whose middleware layers cost ~5-15 ms of Python per request, and a pipeline task
#: makes dozens of sequential requests. One worker process (one sqlite writer, one import of
#: MLflow). Threads, started as needed: a task uploads up to 8 artifacts at once, and a client
#: that sends part of a request and stalls holds one thread until it hangs up (uvicorn held
#: none), so any local process with 32 such connections stalls this server. No control socket:
#: gunicorn's default is ~/.gunicorn/gunicorn.ctl, a listener shared by every stack of the user.
GUNICORN_OPTS = "--threads 32 --keep-alive 5 --no-control-socket"
#: Settings from the user's shell that would loosen the server's Host/CORS guards.
_LOOSENING = (
    "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE",
    "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
    "MLFLOW_SERVER_ALLOWED_HOSTS",
)


def command(state: Path, ports: Ports) -> list[str]:
    """`mlflow server` under gunicorn with the basic-auth app (its config: `_auth_env`)."""
    return [
        sys.executable,  # the same environment as genpipe, wherever PATH points
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{state / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        MLFLOW_ARTIFACTS,
        "--host",
        HOST,
        "--port",
        str(ports.mlflow),
        "--workers",
        "1",
        "--gunicorn-opts",
        GUNICORN_OPTS,
        "--app-name",
        "basic-auth",
    ]


def current(state: Path, pid: int) -> bool:
    """Whether the MLflow `pid` runs today's auth config and server (older ones: uvicorn)."""
    cmd = procs.cmdline(pid)
    return auth_current(state) and (cmd is None or f"--gunicorn-opts {GUNICORN_OPTS}" in cmd)


def use_wal(db: Path) -> None:
    """Put the tracking store in write-ahead-log mode (kept in the file) while no server has it
    open: a commit then appends to the log instead of rewriting pages through a rollback
    journal, ~2-3x faster writes (set_tag, log_metric, log_batch). One server process writes;
    the store is a local file (WAL needs a local filesystem, as does sqlite's locking)."""
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))  # owner-only; sqlite's -wal follows it
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError:
        pass  # locked or not a database: MLflow opens it as it is and reports what is wrong


def checkpoint(db: Path) -> None:
    """Fold the write-ahead log into the store once its server has stopped, so that mlflow.db
    alone holds everything (a copy of it is a whole backup); closing removes the -wal file."""
    if not db.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.DatabaseError:
        pass  # locked (a server we did not stop still has it): the log stays, still valid


def start(state: Path, ports: Ports, creds: Credentials) -> int:
    try:
        import boto3  # noqa: F401  (MLflow's S3 artifact store needs it, in the server process)
    except ImportError as e:
        raise StackError(
            "MLflow stores artifacts on S3 through boto3, which is not installed: pip install boto3"
        ) from e
    use_wal(state / "mlflow.db")
    # A session token or profile from the user's shell would be sent along with our keys.
    drop = ("AWS_SESSION_TOKEN", "AWS_PROFILE", *_LOOSENING)
    return spawn(state, MLFLOW, command(state, ports), environment(state, ports, creds), drop)


def environment(state: Path, ports: Ports, creds: Credentials) -> dict[str, str]:
    """What `mlflow server` gets on top of our environment (less `_LOOSENING`): the auth app's
    config, the Host guard, the S3 keys (writes the auth config)."""
    server_env = {
        **_auth_env(state),
        # DNS-rebinding guard: only requests addressed to this very server (the Flask app's
        # Host check; MLflow refuses `--allowed-hosts` on the command line with gunicorn).
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"{HOST}:{ports.mlflow},localhost:{ports.mlflow}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{ports.s3}",
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        # Newer boto3 adds flexible checksums that S3-compatible servers may not know.
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        # The GenAI job runner spawns ~8 huey workers (>1 GB RAM, +10 s startup): unused here.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    # boto3 honours http(s)_proxy: keep the server's S3 calls to 127.0.0.1 direct.
    for var in ("NO_PROXY", "no_proxy"):
        server_env[var] = ",".join(filter(None, [os.environ.get(var), HOST, "localhost"]))
    return server_env


# No proxies: an http_proxy from the user's shell must not see (or break) loopback traffic.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(ports: Ports) -> bool:
    try:
        with _DIRECT.open(f"http://{HOST}:{ports.mlflow}/health", timeout=3) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response's socket
        return False
    except (urllib.error.URLError, OSError, ValueError):
        return False
