"""Warm task processes for embedded mode: import TensorFlow, MLflow and kfp once, fork per task.

kfp.local's SubprocessRunner starts every task as a fresh `python -m kfp.dsl.executor_main`,
which pays the import of TensorFlow, Keras, MLflow and kfp again for each of the four tasks
(5-13 s each on a 2-core machine): most of a short pipeline's overhead. Here one *zygote*
process imports them once; each task is a `fork()` of it that runs the very same executor
entry point with the same arguments and environment, so tasks stay separate processes
(a crash or `os._exit` in one cannot take down the run) but start in milliseconds.

Fork is safe here because the zygote only imports: it never runs a TensorFlow op, so no
runtime thread pools exist when it forks (`_assert_tf_not_started`). Whatever cannot be run
this way (a command of a shape we do not know, a dead zygote, `GENPIPE_WARM_TASKS=0`) falls
back to kfp's own subprocess, so behaviour never depends on the optimisation.

`GENPIPE_WARM_DEBUG=1` makes each task write the modules it imported itself (not preloaded)
to $TMPDIR/genpipe-warm-<pid>.txt: what to add to PRELOAD.

Protocol over a Unix socketpair: the client sends one JSON request (argv, env, cwd) with the
write end of a pipe attached (SCM_RIGHTS); the zygote forks, the child writes its output to
that pipe, and the zygote answers with the child's exit code.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
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
    "zoo.images",
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
_MAX_MSG = 1 << 24
_PR_SET_PDEATHSIG = 1


def enabled() -> bool:
    return os.environ.get("GENPIPE_WARM_TASKS", "1") not in ("0", "false", "no")


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


class Zygote:
    """Handle to the warm process; `run()` executes one kfp task command in a fork of it."""

    def __init__(self, log_path: str | os.PathLike[str] = os.devnull) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = parent
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipelines.warm", str(child.fileno())],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=os.getcwd(),
            )
        child.close()
        self.lock = threading.Lock()
        self.ready: bool | None = None  # None: preloading; False: failed (fall back)

    def alive(self) -> bool:
        """Preloaded and running; waits for the preload on first use."""
        if self.ready is None:
            self.ready = _recv_exact(self.sock, 1) == b"R"
        return bool(self.ready) and self.proc.poll() is None

    def run(self, full_command: list[str], env_vars: dict[str, str] | None) -> int | None:
        """Exit code of the task, or None when the zygote cannot run it (caller falls back)."""
        parsed = parse_command(full_command)
        if parsed is None or not self.alive():
            return None
        source, args = parsed
        read_fd, write_fd = os.pipe()
        request = json.dumps(
            {
                "source": source,
                "args": args,
                # the environment a subprocess would get now (it may have changed since the
                # zygote started, e.g. the stack's endpoints and keys)
                "env": {**os.environ, **(env_vars or {})},
                "cwd": os.getcwd(),
            }
        ).encode()
        with self.lock:
            try:
                socket.send_fds(self.sock, [len(request).to_bytes(8, "big") + request], [write_fd])
            except OSError:
                os.close(read_fd)
                return None
            finally:
                os.close(write_fd)
            # Same output handling as kfp's run_local_subprocess: line by line to stdout.
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as out:
                for line in out:
                    print(line, end="")
            print("\n")
            reply = _recv_exact(self.sock, 8)
            if reply is None:
                return 1  # the zygote died mid-task: the task failed
            return int.from_bytes(reply, "big", signed=True)

    def call(self, target: str, **kwargs: Any) -> Any:
        """`module:function(**kwargs)` run in a fork of the zygote; returns its JSON result.

        Lets the caller use the preloaded modules without importing them itself. A GenpipeError
        in the function is raised here as the same message; anything else as RuntimeError.
        Raises _Unavailable when the zygote cannot run it (the caller runs it itself).
        """
        if not self.alive():
            raise _Unavailable(target)
        read_fd, write_fd = os.pipe()
        request = json.dumps({"call": target, "kwargs": kwargs, "cwd": os.getcwd()}).encode()
        with self.lock:
            try:
                socket.send_fds(self.sock, [len(request).to_bytes(8, "big") + request], [write_fd])
            except OSError:
                os.close(read_fd)
                raise _Unavailable(target) from None
            finally:
                os.close(write_fd)
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as out:
                text = out.read()
            if _recv_exact(self.sock, 8) is None:
                raise _Unavailable(target)
        try:
            reply = json.loads(text.splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"{target} in the warm process gave no result:\n{text}") from None
        if "value" in reply:
            return reply["value"]
        if reply.get("user_error"):
            from zoo.errors import GenpipeError

            raise GenpipeError(reply["error"])
        raise RuntimeError(f"{target} failed in the warm process:\n{reply['error']}")

    def close(self) -> None:
        # Idle between tasks and stateless: kill it rather than wait for the interpreter
        # shutdown of a TensorFlow-loaded Python (seconds).
        with contextlib.suppress(OSError):
            self.sock.close()
        self.proc.kill()
        self.proc.wait()


class _Unavailable(Exception):
    """The zygote cannot take the request (not started, failed preload, died)."""


def call(target: str, **kwargs: Any) -> Any:
    """`module:function(**kwargs)` in the prestarted zygote if there is one, else in-process."""
    if _prestarted:
        try:
            return _prestarted[0].call(target, **kwargs)
        except _Unavailable:
            pass
    module, func = target.split(":")
    import importlib

    return getattr(importlib.import_module(module), func)(**kwargs)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


_prestarted: list[Zygote] = []


def prestart(log_path: str | os.PathLike[str] = os.devnull) -> None:
    """Start the zygote now, so its imports overlap the caller's own start-up work."""
    if enabled() and not _prestarted:
        _prestarted.append(Zygote(log_path))


@contextlib.contextmanager
def warm_tasks(log_path: str | os.PathLike[str] = os.devnull) -> Iterator[Zygote | None]:
    """Within this block kfp.local's subprocess tasks run as forks of a warm zygote.

    Uses the zygote from `prestart()` if there is one; its output (import warnings) goes to
    `log_path`.
    """
    if not enabled():
        yield None
        return
    from kfp.local import subprocess_task_handler as sth

    zygote = _prestarted.pop() if _prestarted else Zygote(log_path)
    original = sth.run_local_subprocess

    def run_local_subprocess(full_command: list[str], env_vars: Any = None) -> int:
        code = zygote.run(full_command, env_vars)
        return original(full_command, env_vars) if code is None else code

    sth.run_local_subprocess = run_local_subprocess
    try:
        yield zygote
    finally:
        sth.run_local_subprocess = original
        zygote.close()


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


def _child(request: dict[str, Any], out_fd: int) -> int:
    """Runs in the forked child: become the task process, then execute kfp's entry point."""
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["_KFP_RUNTIME"] = "true"  # what kfp's sh wrapper sets
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    program_dir = tempfile.mkdtemp(prefix="genpipe-task-")
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
        sys.stdout.flush()
        sys.stderr.flush()


def _child_call(request: dict[str, Any], out_fd: int) -> int:
    """Runs in the forked child: one function call, its JSON result as the last output line."""
    from zoo.errors import GenpipeError

    os.dup2(out_fd, 1)
    os.close(out_fd)
    _die_with_parent()
    os.chdir(request["cwd"])
    module, func = request["call"].split(":")
    try:
        import importlib

        value = getattr(importlib.import_module(module), func)(**request["kwargs"])
        reply: dict[str, Any] = {"value": value}
    except GenpipeError as e:
        reply = {"error": str(e), "user_error": True}
    except Exception:  # noqa: BLE001 - reported to the caller with its traceback
        import traceback

        reply = {"error": traceback.format_exc()}
    with open(1, "w", encoding="utf-8", closefd=False) as out:
        out.write("\n" + json.dumps(reply) + "\n")
    return 0


def serve(fd: int) -> None:
    """Zygote main loop: one request at a time (kfp.local runs tasks one after another)."""
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the task, not the zygote
    _die_with_parent()
    import importlib

    for name in PRELOAD:
        # optional ones (e.g. git) missing: the task imports what it needs itself
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from zoo import models

    for name in models.names():  # the model modules (registered Keras classes)
        models.get(name)
    _assert_tf_not_started()
    sock.sendall(b"R")
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
        pid = os.fork()
        if pid == 0:
            sock.close()
            code = 1
            try:
                code = (_child_call if "call" in request else _child)(request, out_fd)
            finally:
                os._exit(code)
        os.close(out_fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        sock.sendall(int(code).to_bytes(8, "big", signed=True))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
