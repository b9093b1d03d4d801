"""Task children forked *before* their request, and released before their process is gone.

A warm session (pipelines.warm_server) runs each request in a fork of itself. Forking a
process with TensorFlow, MLflow and kfp imported (~0.8 GB mapped) takes 10-30 ms of page
table copies, and its exit as long again (the kernel tears those down, with every page the
task copied, before the parent can reap it): both used to sit between one pipeline task and
the next, once per task. Here the session forks a *spare* child ahead of time (before its
client came, and while a task runs, once past its start-up: the next task will need one)
that waits for its request on a socketpair; and a child that finished reports its exit code on that
socketpair and lets go of the client's output pipe before it exits, so the client reads EOF
and the code while the kernel still tears the process down.

Nothing else changes: the child is a fork of the same session (same preloaded state: a
session only serves after it forked), it runs the same `run(request, out_fd)`, and a child
that dies without reporting (a signal, the OOM killer, `os._exit` in the task) is reaped and
reported by its real exit status as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from pipelines.warm_wire import _MAX_MSG, _recv_exact

_PR_SET_PDEATHSIG = 1
#: a task still running after this long gets the next task's spare forked beside it: its
#: start-up (copy-on-write faults, which a concurrent fork of the session slows) is past;
#: a pipeline's tasks but the exit handler (finalize, ~0.1 s) run longer
MEANWHILE_AFTER_S = 0.15
#: a child asked to stop (its client hung up: Ctrl-C) is killed if still running after this
#: long; a task needs well under a second to mark its MLflow run KILLED and exit
STOP_GRACE_S = 10.0
#: what a spare runs: (request, the client's output fd) -> exit code
Runner = Callable[[dict[str, Any], int], int]


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent exits, so no orphan outlives an interrupted run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Spare:
    """A forked child waiting for one request (`start`), whose exit code `wait` returns."""

    def __init__(
        self, run: Runner, close: tuple[socket.socket, ...] = (), close_fds: tuple[int, ...] = ()
    ) -> None:
        """Fork the child; it closes `close` and `close_fds` (its parent's, not its own)."""
        self.chan, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pid = os.fork()
        if self.pid == 0:  # the spare: never returns
            code = 1
            try:
                self.chan.close()
                for s in close:  # the session's client socket (listener) is not the child's
                    s.close()
                for fd in close_fds:
                    os.close(fd)
                code = _serve_one(child_end, run)
            finally:
                os._exit(code)
        child_end.close()

    def start(self, body: bytes, out_fd: int) -> None:
        """Hand the child its request (the JSON `body`) and the client's output pipe."""
        socket.send_fds(self.chan, [len(body).to_bytes(8, "big") + body], [out_fd])

    def wait(
        self,
        client: socket.socket,
        meanwhile: Callable[[], None] | None = None,
        after: float = MEANWHILE_AFTER_S,
        grace: float = STOP_GRACE_S,
    ) -> int:
        """The child's exit code, as soon as it reported it (it may still be exiting: `reap`
        later). When `client` hangs up or half-closes meanwhile (Ctrl-C, kill), the child is
        asked to stop (SIGTERM: a task marks its MLflow run KILLED, a run stops its task) and
        killed if it has not within `grace` s. `meanwhile` runs once if the child is still
        running `after` seconds in (past its start-up)."""
        pending = meanwhile
        deadline = time.monotonic() + after
        watched = [self.chan, client]
        kill_at: float | None = None
        while True:
            due = [t for t in (deadline if pending else None, kill_at) if t is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            readable, _, _ = select.select(watched, [], [], timeout)
            if self.chan in readable:
                reported = _recv_exact(self.chan, 8)
                self.chan.close()
                if reported is not None:
                    return int.from_bytes(reported, "big", signed=True)
                # died without reporting: its real exit status
                return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            now = time.monotonic()
            if pending and now >= deadline:
                pending()
                pending = None
            if kill_at is not None and now >= kill_at:
                kill_at = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            if client in readable and _client_gone(client):
                watched = [self.chan]  # asked once; from now on only the child's end counts
                kill_at = now + grace
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)

    def discard(self) -> None:
        """An unused spare: closing its channel makes it exit."""
        with contextlib.suppress(OSError):
            self.chan.close()

    def reap(self) -> bool:
        """Collect the exited child; False while it is still exiting."""
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            return True


def _client_gone(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _serve_one(chan: socket.socket, run: Runner) -> int:
    """In the spare: wait for the request, run it, report the exit code, let go of the
    client's pipe (the exit that follows no longer delays the client)."""
    _die_with_parent()
    try:
        header, fds, _, _ = socket.recv_fds(chan, 8 + _MAX_MSG, 1)
    except OSError:
        return 0
    if not header or not fds:
        return 0  # discarded: the session ended without a request for it
    size = int.from_bytes(header[:8], "big")
    rest = _recv_exact(chan, size - (len(header) - 8)) if len(header) - 8 < size else b""
    if rest is None:
        return 0
    code = run(json.loads(header[8:] + rest), fds[0])
    status = code & 0xFF  # what os._exit(code) leaves for waitpid
    # The output pipe's last write ends were dup'ed to 1 and 2: /dev/null in their place
    # (atomically: no other thread can get fd 1 or 2 for a file of its own meanwhile).
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    with contextlib.suppress(OSError):
        chan.sendall(status.to_bytes(8, "big", signed=True))
    return status
