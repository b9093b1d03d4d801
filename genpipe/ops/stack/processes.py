"""The stack's server processes: start one detached, find it again by its pid file, stop it.

A pid file alone proves nothing (the process may be gone, the pid reused): `running_pid`
also checks that the process's command line names this state dir (`_marker`). `stop_own`
finds processes by their command line instead (every warm task server of a state dir, for
`genpipe down`), and signals only our own uid's, re-checked through a pidfd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from genpipe.ops import procs
from genpipe.ops.stack.statedir import WEED, log_path, pid_file, rotate, tail, write_private
from zoo.errors import StackError

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


def alive(pid: int) -> bool:
    """Whether `pid` runs (reaped first if it is a server this process started)."""
    _reap(pid)
    return procs.alive(pid)


def running_pid(state: Path, name: str) -> int | None:
    """The pid of this state dir's server `name` if it runs (guards against pid reuse)."""
    path = pid_file(state, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not alive(pid):
        return None
    cmd = procs.cmdline(pid)
    if cmd is not None and _marker(state, name) not in cmd:
        return None  # the pid was reused by an unrelated process
    return pid


def _own_proc(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, arguments) of `pid` if it is a live process of our own uid (real and
    effective), else None (gone, a zombie, another user's, or unreadable). Linux: /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in status.splitlines())}
    if fields.get("State", [""])[0] == "Z" or fields.get("Uid", [])[:2] != [str(os.getuid())] * 2:
        return None
    if not raw or not fields.get("PPid"):
        return None
    return int(fields["PPid"][0]), raw.decode(errors="replace").split("\0")[:-1]


def own_processes() -> list[tuple[int, int, list[str]]]:
    """(pid, parent pid, arguments) of every live process of our own uid.

    Without /proc (macOS) from `ps`, whose command lines are split at spaces.
    """
    if Path("/proc/self/status").exists():
        found = []
        for entry in Path("/proc").iterdir():
            proc = _own_proc(int(entry.name)) if entry.name.isdigit() else None
            if proc is not None:
                found.append((int(entry.name), *proc))
        return found
    out = subprocess.run(
        ["ps", "-x", "-U", str(os.getuid()), "-o", "pid=,ppid=,command="],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return [(int(p), int(pp), argv) for p, pp, *argv in map(str.split, out.stdout.splitlines())]


def signal_own(pid: int, sig: int, match: Callable[[list[str]], bool]) -> bool:
    """Send `sig` to `pid` only if it is still a process of ours whose arguments `match`.

    The check runs after a pidfd pins the process (Linux), so a pid that was reused since it
    was listed (or read from a file) is never signalled. Returns whether the signal was sent.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (macOS, old kernels): check, then kill
        pidfd = -1
    try:
        if Path("/proc/self/status").exists():
            argv = (_own_proc(pid) or (0, None))[1]
        else:
            argv = next((a for p, _, a in own_processes() if p == pid), None)
        if argv is None or not match(argv):
            return False
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def stop_own(match: Callable[[list[str]], bool], timeout: float = 10.0) -> list[int]:
    """Stop every process of our uid whose arguments `match`: SIGTERM to each one whose
    parent is not itself matched (forked children that share the command line go with their
    parent), SIGKILL after `timeout` to any matched one still running. Returns the pids that
    got the SIGTERM."""
    matched = {pid: ppid for pid, ppid, argv in own_processes() if match(argv)}
    roots = [pid for pid, ppid in matched.items() if ppid not in matched]
    stopped = [pid for pid in roots if signal_own(pid, signal.SIGTERM, match)]
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in matched) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in matched:
        if alive(pid):
            signal_own(pid, signal.SIGKILL, match)
    return stopped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `timeout`."""
    # Each server was started with start_new_session=True, so its pid is its group id and
    # the group holds its workers too (MLflow's gunicorn master and worker).
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


def spawn(
    state: Path, name: str, cmd: list[str], extra_env: dict[str, str], drop: tuple[str, ...] = ()
) -> int:
    """Start `cmd` detached (own session, umask 077, output appended to its log) and write
    its pid file; returns its pid. Its environment is ours less `drop`, plus `extra_env`."""
    log = log_path(state, name)
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    rotate(log)
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
    write_private(pid_file(state, name), f"{proc.pid}\n")
    return proc.pid


def wait_ready(state: Path, name: str, pid: int, ready: Callable[[], bool], timeout: float) -> None:
    """Wait until `ready()`; on exit or timeout raise StackError quoting the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive(pid):
            raise StackError(
                f"{name} exited during startup; last lines of {log_path(state, name)}:\n"
                f"{tail(log_path(state, name))}"
            )
        time.sleep(0.25)
    if ready():
        return
    stop(pid, timeout=5)
    raise StackError(
        f"{name} did not become ready within {timeout:.0f} s (stopped it); last lines of "
        f"{log_path(state, name)}:\n{tail(log_path(state, name))}"
    )
