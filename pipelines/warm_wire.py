"""The warm server's wire: its socket address, the peer-uid check, and the client's session.

Both sides (pipelines.warm, the client in the `genpipe` process; pipelines.warm_server, the
zygote) use these. Protocol: the session greets with b"R" + its pid once preloaded; the
client sends one JSON request (8-byte length + body) with the write end of a pipe attached
(SCM_RIGHTS); the forked child writes its output to that pipe, and the session answers with
the child's exit code (8 bytes, signed). Every connection is checked with SO_PEERCRED on
both ends: nothing is sent to, or read from, a process of another uid.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo import timeline

_MAX_MSG = 1 << 24
#: in a streamed call's output: a line for the client's `on_event` (kind, fields) ...
EVENT = "\x1egenpipe-event "
#: ... and the call's JSON reply (its last such line)
REPLY = "\x1egenpipe-reply "
_EXECUTOR = "kfp.dsl.executor_main"
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes (104 on BSDs) including the NUL


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

    def _request(
        self, request: dict[str, Any], on_event: Callable[[str, dict[str, Any]], None] | None = None
    ) -> tuple[int, Any] | None:
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
                try:
                    text = _read_output(out, request, on_event)
                    reply = _recv_exact(self.sock, 8)
                except KeyboardInterrupt:
                    # Ctrl-C (or, in a run's fork, the SIGTERM its session sends when our own
                    # client went): our half-close makes the session SIGTERM the child, which
                    # ends as it should (a task marks its MLflow run KILLED). Its last output
                    # and exit are waited for; a second Ctrl-C stops waiting.
                    self.ready = False
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_WR)
                    _read_output(out, request, on_event)
                    _recv_exact(self.sock, 8)
                    raise
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

    def call(
        self,
        target: str,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """`module:function(**kwargs)` run in a fork of the zygote; returns its JSON result.

        Lets the caller use the preloaded modules without importing them itself. A GenpipeError
        in the function is raised here as the same message; anything else as RuntimeError.
        Raises _Unavailable when the zygote cannot run it (the caller runs it itself).

        With `on_event` the call is *streamed*: the function gets an `on_event(kind, fields)`
        of its own whose calls arrive here as they happen, and whatever else the child prints
        (fds 1 and 2) arrives as ("output", {"line": ...}). A streamed call that was sent is
        never reported as _Unavailable (it may have done its work): losing the server then
        raises GenpipeError.
        """
        if not self.alive():
            raise _Unavailable(target)
        request = {"call": target, "kwargs": kwargs, "cwd": os.getcwd(), "env": dict(os.environ)}
        if on_event is not None:
            request["stream"] = True
        done = self._request(request, on_event)
        if done is None and on_event is not None:
            from zoo.errors import GenpipeError

            raise GenpipeError(
                f"the warm task server went away during {target} (`genpipe down`, or killed); "
                "its log: $GENPIPE_HOME/logs/warm-server.log"
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
        if reply.get("interrupted"):  # stopped by its session (our connection went)
            raise KeyboardInterrupt
        if reply.get("refused"):
            raise PermissionError(reply["error"])
        raise RuntimeError(f"{target} failed in the warm process:\n{reply['error']}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _read_output(
    out: Any, request: dict[str, Any], on_event: Callable[[str, dict[str, Any]], None] | None
) -> Any:
    """A request's output: a streamed call's reply (its events to `on_event`), a call's
    text, or (a task) None, its lines printed as kfp's run_local_subprocess prints them."""
    if on_event is not None:  # a streamed call: events as they come
        return _read_stream(out, on_event)
    if "call" in request:
        return out.read()
    for line in out:
        print(line, end="")
    print("\n")
    return None


def _read_stream(out: Any, on_event: Callable[[str, dict[str, Any]], None]) -> str:
    """A streamed call's output, line by line: events to `on_event`, other lines as
    ("output", {"line": ...}); returns the reply line's JSON ("" when there was none)."""
    reply = ""
    for line in out:
        text, marker, rest = line.rstrip("\n").partition("\x1egenpipe-")
        if text:  # a partial line printed just before the marker, or a plain line
            on_event("output", {"line": text})
        if not marker:
            continue
        kind, _, body = rest.partition(" ")
        if kind == "reply":
            reply = body
            timeline.mark("client: reply read")
        elif kind == "event":
            event = json.loads(body)
            on_event(str(event["kind"]), event["fields"])
    return reply


class _Unavailable(Exception):
    """The zygote cannot take the request (not started, failed preload, died)."""


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
