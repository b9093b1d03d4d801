"""The warm server (zygote side of pipelines.warm): preload, then fork a session per client
and a child per task or call.

`python -m pipelines.warm_server serve ADDRESS IDLE_SECONDS` (started by pipelines.warm).
It binds its socket (0600, in a 0700 dir), imports PRELOAD (never running a TensorFlow op, so
forking stays safe), and closes any connection whose peer uid is not its own before reading a
byte. A task request runs the component source it carries (kfp's command, from our own uid);
a `call` request runs only a function of `pipelines.warm.CALLS`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import warm
from pipelines.warm import CALLS, _not_allowed, _resolve
from pipelines.warm_preload import (  # noqa: F401  (PRELOAD, _prime_caches: re-exported)
    PRELOAD,
    _preload,
    _prime_caches,
)
from pipelines.warm_spare import STOP_GRACE_S, Spare, _die_with_parent
from pipelines.warm_wire import (
    _EXECUTOR,
    _MAX_MSG,
    EVENT,
    REPLY,
    _peer_uid,
    _private_dir,
    _try_connect,
)
from zoo import timeline


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
    tempfile.tempdir = None  # the client's TMPDIR, not the one cached in the server


def _child(request: dict[str, Any], out_fd: int) -> int:
    """Runs in the forked child: become the task process, then execute kfp's entry point."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (Ctrl-C of `genpipe run`, through the session) unwinds the task like Ctrl-C,
    # also outside zoo.tracking.run_status (which marks the MLflow run KILLED inside): its
    # temp dir is removed below; a task that does not unwind is SIGKILLed after the grace.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _become_child(request, out_fd, (1, 2))
    timeline.mark("task: forked")
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

    debug = bool(os.environ.get("GENPIPE_WARM_DEBUG"))
    # Only for the debug list: a set of sys.modules' ~6,500 names takes a reference to each,
    # and each reference writes a page the fork still shares (~3,000 copy-on-write faults,
    # ~15 ms: most of a task's start)
    before = set(sys.modules) if debug else set()
    try:
        if os.environ.get("GENPIPE_WARM_PROFILE"):  # where a task's seconds go: cProfile
            import cProfile

            prof_path = os.path.join(os.environ["GENPIPE_WARM_PROFILE"], f"task-{os.getpid()}.prof")
            cProfile.runctx("executor_main.executor_main()", globals(), locals(), prof_path)
        else:
            executor_main.executor_main()
        if debug:
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
        timeline.mark("task: ended")
        shutil.rmtree(program_dir, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()


def _child_call(request: dict[str, Any], out_fd: int) -> int:
    """Runs in the forked child: one function call, its JSON result as the last output line.

    A streamed call (`Zygote.call(on_event=...)`) also gets the client's fd 2, and an
    `on_event` whose events reach the client as they happen (pipelines.warm_wire.EVENT lines).
    """
    from zoo.errors import GenpipeError

    # The session's SIGTERM when the client went (Ctrl-C): unwinds the call like Ctrl-C, so
    # a run stops its running task and says so before it ends (pipelines.local).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stream = bool(request.get("stream"))
    _become_child(request, out_fd, (1, 2) if stream else (1,))
    out = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        """One event to the client, on a line of its own; none once the client is gone (a
        second Ctrl-C): the call still ends as it would (a run ends its MLflow run)."""
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()  # what was printed before the event comes before it
            out.write(f"\n{EVENT}{json.dumps({'kind': kind, 'fields': fields})}\n")

    kwargs = {**request["kwargs"], **({"on_event": on_event} if stream else {})}
    reply: dict[str, Any] = {}
    try:
        func = _resolve(request["call"])
    except PermissionError as e:  # not one of CALLS: nothing ran
        func, reply = None, {"error": str(e), "refused": True}
    try:
        if func is not None:
            reply = {"value": func(**kwargs)}
    except GenpipeError as e:
        reply = {"error": str(e), "user_error": True}
    except KeyboardInterrupt:
        reply = {"error": f"{request['call']} was interrupted", "interrupted": True}
    except Exception:  # noqa: BLE001 - reported to the caller with its traceback
        import traceback

        reply = {"error": traceback.format_exc()}
    try:
        line = json.dumps(reply)
    except (TypeError, ValueError) as e:
        line = json.dumps({"error": f"{request['call']} returned a non-JSON value: {e}"})
    sys.stdout.flush()
    sys.stderr.flush()
    with out:
        out.write("\n" + (REPLY if stream else "") + line + "\n")
    return 0


def _run(request: dict[str, Any], out_fd: int) -> int:
    """What a session's child runs: one task or one call."""
    return (_child_call if "call" in request else _child)(request, out_fd)


def _fork_into(spares: list[Spare], sock: socket.socket) -> None:
    spares.append(Spare(_run, close=(sock,)))


def handle(sock: socket.socket, spare: Spare | None = None) -> None:
    """One client's session: one request at a time (kfp.local runs tasks one after another).

    Each request runs in a child forked ahead of it (pipelines.warm_spare): `spare`, forked
    before the client came (else one forked once it is greeted), and one while each task
    runs, once past its start-up (a fork beside a starting task slows it; the next task will
    want it), or as soon as the session's first task ended if it ended sooner; a session
    that ends leaves its unused spare to exit.
    """
    sock.sendall(b"R" + os.getpid().to_bytes(8, "big"))
    if spare is None:
        spare = Spare(_run, close=(sock,))
    exited: list[Spare] = []  # reported their code, maybe still exiting: reaped later
    tasks_run = 0  # task (not call) requests served
    try:
        while True:
            exited = [s for s in exited if not s.reap()]
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
                    marker = REPLY if request.get("stream") else ""
                    out.write("\n" + marker + json.dumps(refusal) + "\n")
                sock.sendall((1).to_bytes(8, "big", signed=True))
                continue
            child = spare if spare is not None else Spare(_run, close=(sock,))
            spare = None
            child.start(body, out_fd)
            os.close(out_fd)
            forked: list[Spare] = []  # a pipeline's next task's, forked while this one runs
            fork_next = functools.partial(_fork_into, forked, sock)
            # a call (`genpipe run`'s fork) outlives its task's grace: once that task is gone,
            # it still ends the MLflow run the task could not end
            grace = 2 * STOP_GRACE_S if "call" in request else STOP_GRACE_S
            code = child.wait(sock, meanwhile=None if "call" in request else fork_next, grace=grace)
            exited.append(child)
            sock.sendall(int(code).to_bytes(8, "big", signed=True))
            # none after a short task (a pipeline's last, the exit handler, is one): the next
            # request, if any, gets a child forked then; but a session's first task is a
            # pipeline's first (ingest, ~0.1 s), never its last: the next task's child is
            # forked now, while the client takes in this one's end
            if "call" not in request and not tasks_run and not forked:
                forked.append(Spare(_run, close=(sock,)))
            tasks_run += "call" not in request
            spare = forked[0] if forked else None
    finally:
        if spare is not None:
            spare.discard()


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
    warm._serving.append(address)  # its forks' own calls and tasks come back here directly
    inode = None if address.startswith("\0") else os.stat(address).st_ino
    try:
        _serve(listener, idle_seconds)
    finally:
        with contextlib.suppress(OSError):
            if inode is not None and os.stat(address).st_ino == inode:
                os.unlink(address)  # ours still, not a successor's


def _serve(listener: socket.socket, idle_seconds: float) -> None:
    """Preload, then keep one session forked ahead of its client (`_waiting_session`): the
    fork of a session (and of its first child) is never between a client's connect and its
    answer. Stops after `idle_seconds` without a client."""
    listener.listen(16)  # clients may connect (and wait) while we preload
    _preload()
    handlers: set[int] = set()
    took_r, took_w = os.pipe()  # a waiting session writes a byte once it took its client
    waiting = _waiting_session(listener, took_r, took_w)
    idle_since = time.monotonic()
    while True:
        for pid in list(handlers):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    handlers.discard(pid)
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(waiting, os.WNOHANG)[0]:  # died before a client (killed)
                waiting = _waiting_session(listener, took_r, took_w)
        if handlers:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle_seconds:
            return
        readable, _, _ = select.select([took_r], [], [], min(idle_seconds, 5.0))
        if readable and os.read(took_r, 1):
            handlers.add(waiting)
            idle_since = time.monotonic()
            waiting = _waiting_session(listener, took_r, took_w)


def _waiting_session(listener: socket.socket, took_r: int, took_w: int) -> int:
    """Fork a session that forks its first child, then waits for a client (returns its pid).

    It accepts the next connection itself, closes it unread unless the peer runs as our own
    uid, tells the server (a byte on `took_w`: fork the next one) and serves it (`handle`).
    """
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the session must not unlink
        _die_with_parent()  # a stopped server takes its sessions (and their tasks) along
        os.close(took_r)
        spare = Spare(_run, close=(listener,), close_fds=(took_w,))
        while True:
            conn, _ = listener.accept()
            uid = _peer_uid(conn)
            if uid == os.getuid():
                break
            # another user (or unknown): not a byte read, nothing run
            print(f"warm server: refused a connection from uid {uid}", flush=True)
            conn.close()
        os.write(took_w, b"1")
        os.close(took_w)
        listener.close()
        handle(conn, spare)
    finally:
        os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        sys.exit("usage: python -m pipelines.warm_server serve ADDRESS IDLE_SECONDS")
    where = sys.argv[2]
    serve("\0" + where[1:] if where.startswith("@") else where, float(sys.argv[3]))
