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
to $TMPDIR/genpipe-warm-<pid>.txt: what to add to PRELOAD.

Protocol over a Unix socket in $GENPIPE_HOME/warm/ (a 0700 dir: no other user can reach it;
an abstract socket only where that path is too long for one): the server checks every
client's uid (SO_PEERCRED) and closes connections from any uid but its own before reading a
byte, and the client checks the server's likewise. The session greets with b"R" + its pid once
preloaded; the client sends one JSON request (task source, args, env, cwd) with the write end
of a pipe attached (SCM_RIGHTS); the session forks, the child writes its output to that pipe,
and the session answers with the child's exit code. A task request runs the component source
it carries (it is kfp's command, and only our own uid can send one); a `call` request runs
only a function of `CALLS`, the ones our client calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: modules a task imports; the zygote imports them before it forks
PRELOAD = (
    "tensorflow",
    "keras",
    "mlflow",
    "mlflow.pyfunc",
    "minio",
    "kfp.dsl.executor_main",
    "zoo.models",
    "zoo.train",
    "zoo.data",
    "zoo.evaluation",
    "zoo.registration",
    "zoo.tracking",
    "zoo.storage",
    "components.ingest",
    "components.train",
    "components.evaluate",
    "components.register",
    # imported lazily by the tasks (measured with GENPIPE_WARM_DEBUG=1)
    "zoo.evaluation.image",
    "zoo.evaluation.features",
    "zoo.evaluation.metrics",
    "zoo.evaluation.text",
    "zoo.blessing",
    "zoo.grids",
    "zoo.serving",
    "zoo.distributed",
    "mlflow.models",
    "mlflow.tracing",
    "mlflow.data.meta_dataset",
    "mlflow.data.http_dataset_source",
    "git",
    "PIL.Image",
    "sklearn.datasets",
)
_EXECUTOR = "kfp.dsl.executor_main"
#: environment variables read at import time (part of the server's code key)
_IMPORT_ENV = ("TF_", "CUDA_", "KERAS_", "XLA_", "OMP_", "MKL_", "ONEDNN_", "PYTHON")
_MAX_MSG = 1 << 24
_PR_SET_PDEATHSIG = 1
#: what `call()` may run in the server: the functions our own client calls, nothing else
CALLS = frozenset({"pipelines.local:check_run_args", "pipelines.local:summary_fields"})
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes (104 on BSDs) including the NUL


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


def parse_command(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(component source, executor args) of a lightweight-component command, else None.

    kfp's command is `sh -ec '<write $0 to ephemeral_component.py; python3 -m
    kfp.dsl.executor_main --component_module_path ... "$@">' <source> <args...>`, optionally
    preceded by a pip-install script (then we do not take over: installing is not ours).
    """
    cmd = list(full_command)
    if len(cmd) < 4 or cmd[0] != "sh" or cmd[1] != "-ec" or any("pip install" in c for c in cmd):
        return None
    script = cmd[2]
    if _EXECUTOR not in script or "ephemeral_component.py" not in script:
        return None
    return cmd[3], cmd[4:]


# -- client side (the `genpipe run` process) -------------------------------------------------


def code_key() -> str:
    """What the warm server's preloaded state depends on: our sources, library versions, and
    the environment variables read at import time. A different key means a different server.
    """
    import hashlib
    import importlib
    import importlib.metadata

    # the environment (venv) and interpreter, not the name it was started by (python/python3)
    h = hashlib.sha256(f"{sys.prefix}|{os.path.realpath(sys.executable)}|{sys.version}".encode())
    for pkg in ("zoo", "components", "pipelines", "genpipe"):
        root = Path(importlib.import_module(pkg).__file__ or "").parent
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.yaml")]):
            st = path.stat()
            h.update(f"{path}:{st.st_mtime_ns}:{st.st_size}".encode())
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "mlflow", "kfp", "minio"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
    for k in sorted(os.environ):
        if k.startswith(_IMPORT_ENV):
            h.update(f"{k}={os.environ[k]}".encode())
    return h.hexdigest()[:32]


def _socket_dir(home: Path) -> Path:
    return home.resolve() / "warm"


def _address(home: Path, key: str) -> str:
    """The server's socket: a file in the 0700 `_socket_dir` (only our uid can connect), or
    an abstract name when that path is too long for a Unix socket (then only the peer-uid
    checks guard it)."""
    import hashlib

    digest = hashlib.sha256(f"{home.resolve()}|{key}".encode()).hexdigest()
    path = _socket_dir(home) / f"{digest[:16]}.sock"
    return str(path) if len(str(path)) < _SUN_PATH_MAX else "\0genpipe-warm-" + digest[:24]


def _private_dir(path: Path) -> None:
    """Create `path` as a 0700 dir of ours; refuse one another user owns (they could swap
    the socket in it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        from zoo.errors import ConfigError

        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not to you: remove it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket (None: unknown)."""
    import struct

    try:  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (Linux)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    return struct.unpack("3i", creds)[1]


class Zygote:
    """A connection to a warm process; `run()` executes one kfp task command in a fork of it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.ready: bool | None = None  # None: preloading; False: failed (fall back)
        self.pid = 0  # the process whose forks the tasks are

    def alive(self) -> bool:
        """Preloaded and connected; waits for the preload on first use."""
        if self.ready is None:
            hello = _recv_exact(self.sock, 9)
            self.ready = hello is not None and hello[:1] == b"R"
            if self.ready and hello is not None:
                self.pid = int.from_bytes(hello[1:], "big")
        return bool(self.ready)

    def _request(self, request: dict[str, Any]) -> tuple[int, Any] | None:
        """(exit code, output of a call) of one request; None if the session died meanwhile.

        Raises _Unavailable if the request could not even be sent (nothing ran).
        """
        read_fd, write_fd = os.pipe()
        body = json.dumps(request).encode()
        with self.lock:
            try:
                socket.send_fds(self.sock, [len(body).to_bytes(8, "big") + body], [write_fd])
            except OSError:
                os.close(read_fd)
                self.ready = False
                raise _Unavailable("send") from None
            finally:
                os.close(write_fd)
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as out:
                if "call" in request:
                    text: Any = out.read()
                else:  # same output handling as kfp's run_local_subprocess: line by line
                    for line in out:
                        print(line, end="")
                    print("\n")
                    text = None
            reply = _recv_exact(self.sock, 8)
        if reply is None:
            self.ready = False
            return None
        return int.from_bytes(reply, "big", signed=True), text

    def run(self, full_command: list[str], env_vars: dict[str, str] | None) -> int | None:
        """Exit code of the task, or None when the zygote cannot run it (caller falls back)."""
        parsed = parse_command(full_command)
        if parsed is None or not self.alive():
            return None
        source, args = parsed
        try:
            done = self._request(
                {
                    "source": source,
                    "args": args,
                    # the environment a subprocess would get now (it may have changed since the
                    # zygote started, e.g. the stack's endpoints and keys)
                    "env": {**os.environ, **(env_vars or {})},
                    "cwd": os.getcwd(),
                }
            )
        except _Unavailable:
            return None
        # Lost mid-task (server killed): the task's outcome is unknown, report it as failed.
        return 1 if done is None else done[0]

    def call(self, target: str, **kwargs: Any) -> Any:
        """`module:function(**kwargs)` run in a fork of the zygote; returns its JSON result.

        Lets the caller use the preloaded modules without importing them itself. A GenpipeError
        in the function is raised here as the same message; anything else as RuntimeError.
        Raises _Unavailable when the zygote cannot run it (the caller runs it itself).
        """
        if not self.alive():
            raise _Unavailable(target)
        done = self._request(
            {"call": target, "kwargs": kwargs, "cwd": os.getcwd(), "env": dict(os.environ)}
        )
        if done is None:
            raise _Unavailable(target)
        text = done[1]
        try:
            reply = json.loads(text.splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"{target} in the warm process gave no result:\n{text}") from None
        if "value" in reply:
            return reply["value"]
        if reply.get("user_error"):
            from zoo.errors import GenpipeError

            raise GenpipeError(reply["error"])
        if reply.get("refused"):
            raise PermissionError(reply["error"])
        raise RuntimeError(f"{target} failed in the warm process:\n{reply['error']}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Unavailable(Exception):
    """The zygote cannot take the request (not started, failed preload, died)."""


def _server_file(home: Path) -> Path:
    return home / "warm-server.json"


def _recorded_server(home: Path) -> tuple[int, str] | None:
    """(pid, key) of the state dir's recorded server if that process still runs as one."""
    try:
        record = json.loads(_server_file(home).read_text())
        pid, key = int(record["pid"]), str(record["key"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # an exited (zombie) process has an empty cmdline; a reused pid runs something else
    return (pid, key) if b"pipelines.warm" in cmdline else None


def connect(home: Path, timeout: float = 20.0) -> Zygote | None:
    """A connection to this state dir's warm server, started if needed; None if impossible.

    One server per state dir and code key: it outlives the run (later runs skip the imports),
    is replaced when our sources, library versions or import-time environment change, stops
    after GENPIPE_WARM_IDLE_SECONDS (default 900) without clients, and with `genpipe down`.
    Its own output (import warnings) goes to $GENPIPE_HOME/logs/warm-server.log.
    """
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


def _start_server(home: Path, address: str, key: str, idle: str) -> int:
    logs = home / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private_dir(_socket_dir(home))
    log_fd = os.open(logs / "warm-server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(log_fd, "ab") as log:
        proc = subprocess.Popen(
            # argv cannot carry the abstract address's leading NUL: "@" stands for it
            [sys.executable, "-m", "pipelines.warm", "serve", _argv_address(address), idle],
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
    try:
        # "pid (comm) state ...": the state follows the last ')' (comm may hold spaces)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_server(home: Path) -> bool:
    """Stop the state dir's warm server if one runs; returns whether one was stopped."""
    recorded = _recorded_server(home)
    _server_file(home).unlink(missing_ok=True)
    if recorded is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(recorded[0], signal.SIGTERM)
    return True


def _try_connect(address: str) -> socket.socket | None:
    """A connection to a server running as our own uid at `address`, else None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(address)
    except OSError:
        s.close()
        return None
    if _peer_uid(s) != os.getuid():  # someone else holds the name: never send them a task
        s.close()
        return None
    return s


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
    """`module:function(**kwargs)` in the prestarted zygote if there is one, else in-process."""
    if _prestarted:
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


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


_prestarted: list[Zygote] = []


def start_in_background(home: Path) -> bool:
    """Start this state dir's warm server (if it is not running) and return at once: it
    imports while the user gets to `genpipe run`. False when warm tasks are off or it could
    not start (runs then start it themselves, or use subprocesses)."""
    if not enabled():
        return False
    zygote = connect(home)
    if zygote is None:
        return False
    zygote.close()  # the server stays up until its idle timeout or `genpipe down`
    return True


def prestart(home: Path) -> None:
    """Connect to (or start) the warm server now, so its imports overlap the caller's work."""
    if enabled() and not _prestarted:
        zygote = connect(home)
        if zygote is not None:
            _prestarted.append(zygote)


@contextlib.contextmanager
def warm_tasks(home: Path) -> Iterator[Zygote | None]:
    """Within this block kfp.local's subprocess tasks run as forks of a warm process.

    Uses the connection from `prestart()` if there is one.
    """
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


# -- zygote side ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent exits, so no orphan outlives an interrupted run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _assert_tf_not_started() -> None:
    """Forking after TensorFlow created its runtime (thread pools) is unsafe: refuse."""
    from tensorflow.python.eager import context

    if context.context_safe() is not None and context.context()._context_handle is not None:
        raise RuntimeError("TensorFlow runtime started in the zygote; cannot fork safely")


def _become_child(request: dict[str, Any], out_fd: int, fds: tuple[int, ...]) -> None:
    """In a forked child: output to the client's pipe (`fds`: 1, or 1 and 2), the client's
    working directory and environment, and no life beyond the session."""
    for fd in fds:
        os.dup2(out_fd, fd)
    os.close(out_fd)
    _die_with_parent()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])  # what a subprocess of the client would get


def _child(request: dict[str, Any], out_fd: int) -> int:
    """Runs in the forked child: become the task process, then execute kfp's entry point."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _become_child(request, out_fd, (1, 2))
    os.environ["_KFP_RUNTIME"] = "true"  # what kfp's sh wrapper sets
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    # Removed when the task ends (below); the pid in the name lets `genpipe gc` find the dir
    # of a task that was killed before it could remove it.
    program_dir = tempfile.mkdtemp(prefix=f"genpipe-task-{os.getpid()}-")
    module_path = os.path.join(program_dir, "ephemeral_component.py")
    with open(module_path, "w", encoding="utf-8") as f:
        f.write(request["source"])
    sys.argv = [_EXECUTOR, "--component_module_path", module_path, *request["args"]]
    from kfp.dsl import executor_main

    before = set(sys.modules)
    try:
        executor_main.executor_main()
        if os.environ.get("GENPIPE_WARM_DEBUG"):
            new = sorted(m for m in set(sys.modules) - before if "autograph_generated" not in m)
            path = os.path.join(tempfile.gettempdir(), f"genpipe-warm-{os.getpid()}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(new))
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a task's failure is reported like a process's
        import traceback

        traceback.print_exc()
        return 1
    finally:
        shutil.rmtree(program_dir, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()


def _child_call(request: dict[str, Any], out_fd: int) -> int:
    """Runs in the forked child: one function call, its JSON result as the last output line."""
    from zoo.errors import GenpipeError

    _become_child(request, out_fd, (1,))
    try:
        value = _resolve(request["call"])(**request["kwargs"])
        reply: dict[str, Any] = {"value": value}
    except PermissionError as e:  # not one of CALLS: nothing ran
        reply = {"error": str(e), "refused": True}
    except GenpipeError as e:
        reply = {"error": str(e), "user_error": True}
    except Exception:  # noqa: BLE001 - reported to the caller with its traceback
        import traceback

        reply = {"error": traceback.format_exc()}
    try:
        line = json.dumps(reply)
    except (TypeError, ValueError) as e:
        line = json.dumps({"error": f"{request['call']} returned a non-JSON value: {e}"})
    with open(1, "w", encoding="utf-8", closefd=False) as out:
        out.write("\n" + line + "\n")
    return 0


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        # optional ones (e.g. git) missing: the task imports what it needs itself
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from zoo import models

    for name in models.names():  # the model modules (registered Keras classes)
        models.get(name)
    _assert_tf_not_started()


def _wait_task(pid: int, sock: socket.socket) -> int:
    """Exit code of task `pid`; kills it if the client goes away meanwhile (Ctrl-C, kill)."""
    # A pidfd becomes readable the moment the task exits: no polling latency per task.
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            watch = [sock] if pidfd < 0 else [sock, pidfd]
            readable, _, _ = select.select(watch, [], [], 0.05 if pidfd < 0 else 5.0)
            if sock in readable and _client_gone(sock):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _client_gone(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def handle(sock: socket.socket) -> None:
    """One client's session: one request at a time (kfp.local runs tasks one after another)."""
    sock.sendall(b"R" + os.getpid().to_bytes(8, "big"))
    while True:
        try:
            header, fds, _, _ = socket.recv_fds(sock, 8 + _MAX_MSG, 1)
        except OSError:
            return
        if not header:
            return  # the client closed: the run is over
        size = int.from_bytes(header[:8], "big")
        body = header[8:]
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                return
            body += chunk
        request = json.loads(body)
        out_fd = fds[0]
        if "call" in request and request["call"] not in CALLS:  # refused without a fork
            with open(out_fd, "w", encoding="utf-8") as out:
                refusal = {"error": _not_allowed(str(request["call"])), "refused": True}
                out.write("\n" + json.dumps(refusal) + "\n")
            sock.sendall((1).to_bytes(8, "big", signed=True))
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            code = 1
            try:
                code = (_child_call if "call" in request else _child)(request, out_fd)
            finally:
                os._exit(code)
        os.close(out_fd)
        code = _wait_task(pid, sock)
        sock.sendall(int(code).to_bytes(8, "big", signed=True))


def _bind(address: str) -> socket.socket | None:
    """A listening socket at `address`, or None when a live server already holds it.

    A socket file left by a killed server is replaced; the check and the replacement run
    under a lock so two servers starting at once cannot both take the name.
    """
    import fcntl

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if address.startswith("\0"):
        try:
            listener.bind(address)
        except OSError:
            listener.close()
            return None
        return listener
    directory = Path(address).parent
    _private_dir(directory)
    lock_fd = os.open(directory / ".bind.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        live = _try_connect(address)
        if live is not None:
            live.close()
            listener.close()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # stale: its server is gone
        listener.bind(address)
        os.chmod(address, 0o600)  # the dir already keeps others out; the file too
        return listener
    finally:
        os.close(lock_fd)


def serve(address: str, idle_seconds: float) -> None:
    """The warm server: bind, preload, then fork one handler per client connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the tasks, not the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `genpipe down`: remove the socket
    listener = _bind(address)
    if listener is None:
        return  # another server took this address first: clients use that one
    inode = None if address.startswith("\0") else os.stat(address).st_ino
    try:
        _serve(listener, idle_seconds)
    finally:
        with contextlib.suppress(OSError):
            if inode is not None and os.stat(address).st_ino == inode:
                os.unlink(address)  # ours still, not a successor's


def _serve(listener: socket.socket, idle_seconds: float) -> None:
    listener.listen(16)  # clients may connect (and wait) while we preload
    _preload()
    handlers: set[int] = set()
    listener.settimeout(min(idle_seconds, 5.0))
    idle_since = time.monotonic()
    while True:
        for pid in list(handlers):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    handlers.discard(pid)
        if handlers:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle_seconds:
            return
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        uid = _peer_uid(conn)
        if uid != os.getuid():  # another user (or unknown): not a byte read, nothing run
            print(f"warm server: refused a connection from uid {uid}", flush=True)
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the session must not unlink
            listener.close()
            conn.settimeout(None)
            _die_with_parent()  # a stopped server takes its sessions (and their tasks) along
            try:
                handle(conn)
            finally:
                os._exit(0)
        conn.close()
        handlers.add(pid)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        sys.exit("usage: python -m pipelines.warm serve ADDRESS IDLE_SECONDS")
    where = sys.argv[2]
    serve("\0" + where[1:] if where.startswith("@") else where, float(sys.argv[3]))
