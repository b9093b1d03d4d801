"""The embedded stack's state directory: its ports, S3 keys, lock, pid files and logs.

What lives where in it: see `genpipe.ops.stack`. Everything written here is owner-only
(`write_private`, `make_private`); the dir itself is 0700.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from zoo import settings
from zoo.errors import StackError
from zoo.ports import port_free

HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # weed listens on port+10000 for gRPC of every service
LOG_ROTATE_BYTES = 10 * 1024 * 1024
#: the servers' names (pid files, logs, `genpipe status`)
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


def state_path(state_dir: str | os.PathLike[str] | None) -> Path:
    # Resolved, so the path in the servers' command lines (our pid-reuse guard) is stable.
    return Path(state_dir or settings.state_dir()).expanduser().resolve()


def write_private(path: Path, text: str) -> None:
    """Write a file that only the owner can read, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing temp file
    os.replace(tmp, path)


def load_ports(state_dir: str | os.PathLike[str] | None = None) -> Ports | None:
    """The ports saved by the last `up` in this state dir, or None."""
    path = state_path(state_dir) / "stack.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())["ports"]
        return Ports(**{f.name: int(saved[f.name]) for f in fields(Ports)})
    except (ValueError, KeyError, TypeError) as e:
        raise StackError(f"{path} is corrupt ({e}): delete it and run `genpipe up`") from e


def save_ports(state: Path, ports: Ports) -> None:
    write_private(state / "stack.json", json.dumps({"ports": asdict(ports)}, indent=2) + "\n")


def random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def credentials(
    state_dir: str | os.PathLike[str] | None = None, create: bool = False
) -> Credentials:
    """The stack's S3 keys; generated (once, mode 0600) when `create` is set."""
    path = state_path(state_dir) / "credentials.json"
    if not path.exists():
        if not create:
            raise StackError(f"no embedded stack in {path.parent}: run `genpipe up` first")
        # Alphanumeric only, so the keys survive shells, URLs and config files unquoted.
        creds = Credentials(
            access_key="GP" + random_key(18, string.ascii_uppercase + string.digits),
            secret_key=random_key(40, string.ascii_letters + string.digits),
        )
        write_private(path, json.dumps(asdict(creds), indent=2) + "\n")
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


def make_private(state: Path) -> None:
    """The state dir and everything in it owner-only (0700 dirs, no group/other bits on files).

    New files are created so (`write_private`, servers started with umask 077); this also
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
def lock(state: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (two `genpipe run`s may call ensure_up at once)."""
    make_private(state)
    with os.fdopen(os.open(state / ".lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def log_path(state: Path, name: str) -> Path:
    return state / "logs" / f"{name}.log"


def rotate(log: Path) -> None:
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log, log.with_suffix(".log.1"))


def tail(log: Path, lines: int = 30) -> str:
    """The last lines written since the last start marker of this log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"(no log at {log})"
    text = text[text.rfind("=== genpipe: starting") :] if "=== genpipe" in text else text
    return "\n".join(text.splitlines()[-lines:])


def check_port_free(port: int, what: str, option: str) -> None:
    if not port_free(port, HOST):
        raise PortInUseError(port, what, option)
