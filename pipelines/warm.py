"""Warm task processes for embedded mode: import TensorFlow, MLflow and kfp once, fork per task.

kfp.local's SubprocessRunner starts every task as a fresh `python -m kfp.dsl.executor_main`,
which pays the import of TensorFlow, Keras, MLflow and kfp (~10 CPU-seconds) again for each
of the four tasks: most of a short pipeline's overhead. Here a *warm server* imports them
once; each task is a `fork()` of it that runs the very same executor entry point with the
same arguments, working directory and environment, so tasks stay separate processes (a crash
or `os._exit` in one cannot take down the run) but start in milliseconds.

The server belongs to the state dir ($GENPIPE_HOME) like the embedded stack: the first
`genpipe run` starts it (its imports overlap that run's start-up), later runs reuse it. It is
keyed by `code_key()` (our source files' paths, sizes and mtimes, library versions, the
import-time environment), so editing the code gets a fresh server on the next run, never a
stale one. It stops after GENPIPE_WARM_IDLE_SECONDS (default 900) without clients, and with
`genpipe down`. Each client connection gets its own forked session; a client that goes away
(Ctrl-C) takes its running task along.

Fork is safe here because the server only imports: it never runs a TensorFlow op, so no
runtime thread pools exist when it forks (`_assert_tf_not_started`). Whatever cannot be run
this way (a command of a shape we do not know, a server that cannot start,
`GENPIPE_WARM_TASKS=0`) falls back to kfp's own subprocess, so behaviour never depends on the
optimisation.

`GENPIPE_WARM_DEBUG=1` makes each task write the modules it imported itself (not preloaded)
to $TMPDIR/genpipe-warm-<pid>.txt: what to add to PRELOAD; `GENPIPE_WARM_PROFILE=DIR` writes
each task's cProfile to DIR/task-<pid>.prof (where a task's seconds go).

This module is the client side (the `genpipe` process); the server is pipelines.warm_server,
the socket and session code both use is pipelines.warm_wire.

Protocol over a Unix socket in $GENPIPE_HOME/warm/ (a 0700 dir: no other user can reach it;
an abstract socket only where that path is too long for one): the server checks every
client's uid (SO_PEERCRED) and closes connections from any uid but its own before reading a
byte, and the client checks the server's likewise. The session greets with b"R" + its pid once
preloaded; the client sends one JSON request (task source, args, env, cwd) with the write end
of a pipe attached (SCM_RIGHTS); a child the session forked ahead (pipelines.warm_spare) writes
its output to that pipe, and the session answers with its exit code. A task request runs the source
of its component (kfp's command; only our own uid can send one); a `call` request runs
only a function of `CALLS`, the ones our client calls (short commands such as `genpipe
generate` use `connect_existing`: a running server answers them without the CLI importing
TensorFlow or MLflow; none running, they run in-process). A *streamed* call also sends the
function's events back as they happen (warm_wire.EVENT lines): `genpipe run` runs its whole
orchestration that way (pipelines.local_request.run_cli), the CLI process only showing its progress.
In the server and its forks `_serving` holds the server's own address: their `connect()` and
`call()` go straight to it, or run in-process, without computing the code key again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.warm_wire import (  # noqa: F401  (re-exported: tests and callers use warm.X)
    Zygote,
    _address,
    _peer_uid,
    _private_dir,
    _socket_dir,
    _try_connect,
    _Unavailable,
    parse_command,
)

#: environment variables read at import time (part of the server's code key)
_IMPORT_ENV = ("TF_", "CUDA_", "KERAS_", "XLA_", "OMP_", "MKL_", "ONEDNN_", "PYTHON")
#: what `call()` may run in the server: the functions our own client calls, nothing else
CALLS = frozenset(
    {
        "pipelines.local:check_run_args",
        "pipelines.local_request:run_request",
        "pipelines.local:summary_fields",
        "pipelines.warm_calls:generate",
        "pipelines.warm_calls:pull",
        "pipelines.warm_calls:serve",
    }
)


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def enabled() -> bool:
    """GENPIPE_WARM_TASKS (default on); a value that is neither on nor off is refused."""
    raw = os.environ.get("GENPIPE_WARM_TASKS", "1")
    if raw.strip().lower() not in _ON + _OFF:
        from zoo.errors import ConfigError

        raise ConfigError(
            f"GENPIPE_WARM_TASKS={raw!r} is not one of {', '.join(_ON)} (on) "
            f"or {', '.join(_OFF)} (off)"
        )
    return raw.strip().lower() in _ON


# -- client side (the `genpipe run` process) -------------------------------------------------


def code_key() -> str:
    """What the warm server's preloaded state depends on: our sources, library versions, and
    the environment variables read at import time. A different key means a different server.

    Every `genpipe run`/`generate` computes it, so it reads only file names and stats: our
    packages are found without importing them, and the libraries' versions are their
    `NAME-VERSION.dist-info` directory names (what importlib.metadata reads; importing that
    alone takes ~0.1 s).
    """
    import hashlib
    import importlib.util

    # the environment (venv) and interpreter, not the name it was started by (python/python3)
    h = hashlib.sha256(f"{sys.prefix}|{os.path.realpath(sys.executable)}|{sys.version}".encode())
    for pkg in ("zoo", "components", "pipelines", "genpipe"):
        spec = importlib.util.find_spec(pkg)
        root = Path((spec.submodule_search_locations or [""])[0] if spec else "")
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.yaml")]):
            st = path.stat()
            h.update(f"{path}:{st.st_mtime_ns}:{st.st_size}".encode())
    for dist in _dist_infos(_PRELOADED_DISTS):
        h.update(dist.encode())
    for k in sorted(os.environ):
        if k.startswith(_IMPORT_ENV):
            h.update(f"{k}={os.environ[k]}".encode())
    return h.hexdigest()[:32]


#: distributions whose version is part of the code key (normalized names)
_PRELOADED_DISTS = frozenset({"tensorflow", "tensorflow_cpu", "keras", "mlflow", "kfp", "minio"})


def _dist_infos(names: frozenset[str]) -> list[str]:
    """The `*.dist-info` directories of distributions `names` on sys.path (their names carry
    the version), in sys.path order."""
    found = []
    for entry in sys.path:
        try:
            listing = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for item in listing:
            if item.endswith(".dist-info"):
                name = item[: -len(".dist-info")].rsplit("-", 1)[0]
                if name.lower().replace("-", "_").replace(".", "_") in names:
                    found.append(os.path.join(entry, item))
    return found


def _server_file(home: Path) -> Path:
    return home / "warm-server.json"


def _recorded_server(home: Path) -> tuple[int, str] | None:
    """(pid, key) of the state dir's recorded server if that process still runs as one."""
    from genpipe.ops import procs

    try:
        record = json.loads(_server_file(home).read_text())
        pid, key = int(record["pid"]), str(record["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # an exited (zombie) process has an empty cmdline; a reused pid runs something else
    return (pid, key) if "pipelines.warm" in (procs.cmdline(pid) or "") else None


def connect(home: Path, timeout: float = 20.0) -> Zygote | None:
    """A connection to this state dir's warm server, started if needed; None if impossible.

    One server per state dir and code key: it outlives the run (later runs skip the imports),
    is replaced when our sources, library versions or import-time environment change, stops
    after GENPIPE_WARM_IDLE_SECONDS (default 900) without clients, and with `genpipe down`.
    Its own output (import warnings) goes to $GENPIPE_HOME/logs/warm-server.log.
    """
    if _serving:  # in a fork of the server: its own socket, and its code is ours
        own = _try_connect(_serving[0])
        return Zygote(own) if own is not None else None
    idle = _idle_seconds()  # a bad setting fails here, before anything is started
    key = code_key()
    address = _address(home, key)
    sock = _try_connect(address)
    if sock is not None:
        return Zygote(sock)
    recorded = _recorded_server(home)
    if recorded is not None and recorded[1] == key:
        pid = recorded[0]  # another run started it just now and it has not bound yet: wait
    else:
        stop_server(home)  # a server of another key (stale code) would only hold memory
        pid = _start_server(home, address, key, idle)
    deadline = time.monotonic() + timeout
    while sock is None and time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)  # it binds before preloading: this is quick
        sock = _try_connect(address)
    if sock is None:
        sock = _try_connect(address)  # lost a start race: another server holds the name
    return Zygote(sock) if sock is not None else None


def connect_existing(home: Path) -> Zygote | None:
    """A connection to this state dir's warm server if one runs with the current code key;
    never starts one (for short commands such as `genpipe generate`, which would rather run
    in-process than wait for a server's imports). None when warm tasks are off or none runs."""
    if not enabled():
        return None
    sock = _try_connect(_address(home, code_key()))
    return Zygote(sock) if sock is not None else None


def _start_server(home: Path, address: str, key: str, idle: str) -> int:
    logs = home / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private_dir(_socket_dir(home))
    log_fd = os.open(logs / "warm-server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(log_fd, "ab") as log:
        proc = subprocess.Popen(
            # argv cannot carry the abstract address's leading NUL: "@" stands for it
            [sys.executable, "-m", "pipelines.warm_server", "serve", _argv_address(address), idle],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=os.getcwd(),
            start_new_session=True,  # not killed with this run: later runs reuse it
        )
    fd = os.open(_server_file(home), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(json.dumps({"pid": proc.pid, "key": key}))
    return proc.pid


def _argv_address(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


def _running(pid: int) -> bool:
    """Alive and not a zombie (a server that lost the bind race exits at once)."""
    from genpipe.ops import procs

    return procs.alive(pid)


def stop_server(home: Path) -> bool:
    """Stop the state dir's warm server if one runs; returns whether one was stopped."""
    recorded = _recorded_server(home)
    _server_file(home).unlink(missing_ok=True)
    if recorded is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(recorded[0], signal.SIGTERM)
    return True


def stop_all(home: Path, timeout: float = 10.0) -> int:
    """Stop every warm server of this state dir, whatever its code key (`genpipe down`);
    returns how many were running.

    The record names only the last server started: one of other code, or one whose record a
    concurrent start overwrote, would keep running. So servers are found by command line:
    processes of our own uid running `-m pipelines.warm_server serve ADDRESS` with ADDRESS
    in this state dir's socket dir (or its abstract name for the recorded or current key);
    each is re-checked through a pidfd before the signal (genpipe.ops.stack.processes).
    """
    from genpipe.ops.stack import processes

    sock_dir = str(_socket_dir(home))
    keys = {code_key()}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        keys.add(str(json.loads(_server_file(home).read_text())["key"]))
    abstract = {_argv_address(_address(home, k)) for k in keys}

    def ours(argv: list[str]) -> bool:
        for i in range(len(argv) - 3):
            if argv[i : i + 3] == ["-m", "pipelines.warm_server", "serve"]:
                address = argv[i + 3]
                return os.path.dirname(address) == sock_dir or address in abstract
        return False

    stopped = processes.stop_own(ours, timeout)
    _server_file(home).unlink(missing_ok=True)
    return len(stopped)


def _idle_seconds() -> str:
    """GENPIPE_WARM_IDLE_SECONDS (default 900), checked here: the server has no one to tell."""
    raw = os.environ.get("GENPIPE_WARM_IDLE_SECONDS", "900")
    try:
        ok = float(raw) > 0
    except ValueError:
        ok = False
    if not ok:
        from zoo.errors import ConfigError

        raise ConfigError(f"GENPIPE_WARM_IDLE_SECONDS={raw!r} must be a number of seconds > 0")
    return raw


def call(target: str, **kwargs: Any) -> Any:
    """`module:function(**kwargs)` in the prestarted zygote if there is one, else in-process
    (also in a fork of the server itself: what it would fork for the call is already here)."""
    if _prestarted and not _serving:
        try:
            return _prestarted[0].call(target, **kwargs)
        except _Unavailable:
            pass
    return _resolve(target)(**kwargs)


def _not_allowed(target: str) -> str:
    return f"{target!r} is not one of the warm server's calls: {', '.join(sorted(CALLS))}"


def _resolve(target: str) -> Any:
    """The function named by 'module:function', if it is one of `CALLS`."""
    import importlib

    if target not in CALLS:
        raise PermissionError(_not_allowed(target))
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


_prestarted: list[Zygote] = []
#: the server's own address, set in the server (pipelines.warm_server) and so in its forks
_serving: list[str] = []


def adopt(zygote: Zygote) -> None:
    """Use connected `zygote` as the prestarted session (for `call()`s, `warm_tasks()`)."""
    if zygote not in _prestarted:
        _prestarted.append(zygote)


def start_in_background(home: Path) -> bool:
    """Start this state dir's warm server (if not running) and return while it imports; False
    when warm tasks are off or it could not start (runs then start it, or use subprocesses)."""
    if not enabled():
        return False
    zygote = connect(home)
    if zygote is None:
        return False
    zygote.close()  # the server stays up until its idle timeout or `genpipe down`
    return True


def wait_ready(home: Path, timeout: float) -> bool:
    """Wait until this state dir's warm server (current code) has preloaded; False when none
    runs, its preload failed or `timeout` s passed (runs then wait for it or fall back)."""
    zygote = connect_existing(home)
    if zygote is None:
        return False
    try:
        zygote.sock.settimeout(timeout)  # the greeting comes once the imports are done
        return zygote.alive()
    finally:
        zygote.close()


def prestart(home: Path) -> None:
    """Connect to (or start) the warm server now, so its imports overlap the caller's work."""
    if enabled() and not _prestarted:
        zygote = connect(home)
        if zygote is not None:
            _prestarted.append(zygote)


@contextlib.contextmanager
def warm_tasks(home: Path) -> Iterator[Zygote | None]:
    """Within this block kfp.local's subprocess tasks run as forks of a warm process (through
    the connection from `prestart()` if there is one)."""
    shared = bool(_prestarted)  # the prestarted session also serves later `call()`s
    zygote = (_prestarted[0] if shared else connect(home)) if enabled() else None
    if zygote is None:
        yield None
        return
    from kfp.local import subprocess_task_handler as sth

    original = sth.run_local_subprocess

    def run_local_subprocess(full_command: list[str], env_vars: Any = None) -> int:
        code = zygote.run(full_command, env_vars)
        return original(full_command, env_vars) if code is None else code

    sth.run_local_subprocess = run_local_subprocess
    try:
        yield zygote
    finally:
        sth.run_local_subprocess = original
        if not shared:
            zygote.close()


def release() -> None:
    """End the prestarted session (the server keeps running for the next run)."""
    while _prestarted:
        _prestarted.pop().close()
