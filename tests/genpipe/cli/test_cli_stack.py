"""`genpipe down`: every warm task server of the state dir stops (whatever its code key), and
no process of another state dir or another user is signalled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_cli

from genpipe.ops import procs
from pipelines import warm
from tests.as_user import NOBODY, can_switch_user

#: a stand-in with the warm server's exact command line that only sleeps (no TensorFlow)
_LOOKALIKE = "import time\ntime.sleep(120)\n"


def _gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is still alive at its end is killed and reaped."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def lookalike_root() -> Iterator[Path]:
    """A world-readable dir holding a fake `pipelines.warm_server` (another user runs it too)."""
    root = Path(tempfile.mkdtemp(prefix="genpipe-lookalike-"))
    (root / "pipelines").mkdir()
    (root / "pipelines" / "__init__.py").write_text("")
    (root / "pipelines" / "warm_server.py").write_text(_LOOKALIKE)
    for path in (root, root / "pipelines"):
        path.chmod(0o755)
    for path in (root / "pipelines").iterdir():
        path.chmod(0o644)
    yield root
    shutil.rmtree(root)


def _lookalike(root: Path, address: str, user: int | None = None) -> subprocess.Popen[bytes]:
    """`python -B -m pipelines.warm_server serve ADDRESS 60`: warm._start_server's command."""
    cmd = ["/usr/bin/python3", "-B", "-m", "pipelines.warm_server", "serve", address, "60"]
    proc = subprocess.Popen(cmd, cwd=root, env={"PATH": "/usr/bin:/bin"}, user=user)
    deadline = time.monotonic() + 10  # until exec'd: its /proc cmdline is the command
    while "pipelines.warm_server" not in (procs.cmdline(proc.pid) or ""):
        assert time.monotonic() < deadline, "the look-alike did not start"
        time.sleep(0.02)
    return proc


def _server_pids(home: Path) -> list[int]:
    """Warm servers of `home` (their sessions share the command line; parents only)."""
    sock_dir = str(warm._socket_dir(home))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = procs.cmdline(int(entry.name)) or ""
            if "pipelines.warm_server serve " + sock_dir in cmd:
                found.append(int(entry.name))
    return found


def test_down_stops_every_warm_server_of_the_state_dir(tmp_path, capsys, monkeypatch):
    """Two servers of one state dir with different code keys (e.g. one left by an earlier run
    of other code, or by two runs that started at once): the record names one, both stop."""
    monkeypatch.setenv("GENPIPE_WARM_IDLE_SECONDS", "120")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pids = []
    for key in ("a" * 32, "b" * 32):
        address = warm._address(home, key)
        pids.append(warm._start_server(home, address, key, "120"))
        deadline = time.monotonic() + 60
        while (sock := warm._try_connect(address)) is None:  # it binds before its imports
            assert time.monotonic() < deadline and procs.alive(pids[-1]), "no server started"
            time.sleep(0.05)
        sock.close()
    recorded = json.loads((home / "warm-server.json").read_text())["pid"]
    assert recorded == pids[1]  # the record knows only the last one
    assert sorted(_server_pids(home)) == sorted(pids)

    code, _, err = run_cli(["down", "--state-dir", str(home)], capsys)
    assert code == 0, err
    assert "warm task server" in err
    try:
        assert all(_gone(pid) for pid in pids), f"left running: {_server_pids(home)}"
        assert list((home / "warm").glob("*.sock")) == []  # each removed its socket
        assert not (home / "warm-server.json").exists()
        code, _, err = run_cli(["down", "--state-dir", str(home)], capsys)
        assert (code, err.strip()) == (0, "nothing was running")
    finally:
        for pid in _server_pids(home):
            os.kill(pid, 9)


def test_down_signals_only_our_own_servers_of_this_state_dir(
    tmp_path, capsys, started, lookalike_root
):
    """A server-like process of another state dir, one of another user naming our socket dir,
    and a live pid of ours that the record names but that is no server all keep running."""
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir(mode=0o700)
    ours = _lookalike(lookalike_root, str(warm._socket_dir(home) / "0123456789abcdef.sock"))
    started.append(ours)
    started.append(_lookalike(lookalike_root, str(warm._socket_dir(other) / "x.sock")))
    if can_switch_user():  # the suite runs as root: a stranger's process it could signal
        stranger = _lookalike(lookalike_root, str(warm._socket_dir(home) / "y.sock"), NOBODY)
        started.append(stranger)
        assert procs.alive(stranger.pid)
    sleeper = subprocess.Popen(["sleep", "120"])
    started.append(sleeper)
    record = home / "warm-server.json"
    record.write_text(json.dumps({"pid": sleeper.pid, "key": "c" * 32}))

    code, _, err = run_cli(["down", "--state-dir", str(home)], capsys)
    assert code == 0, err
    assert _gone(ours.pid)  # (reaped by `down`, which here is its parent: no return code)
    for proc in started[1:]:
        assert proc.poll() is None, f"{proc.args} was signalled"
    assert not record.exists()


def test_up_returns_once_the_warm_server_has_preloaded(stack, capsys):
    """`up` starts the warm server before the stack (its imports overlap the stack's start)
    and returns when it is ready: the first run after `up` forks at once. Before, `up` started
    it last and returned at once, so that run waited for TensorFlow's import."""
    home = stack.state_dir
    warm.stop_all(home)  # as after `genpipe down`: no server of this state dir
    assert warm.connect_existing(home) is None
    assert warm.wait_ready(home, 1.0) is False  # none runs: nothing to wait for

    code, _, err = run_cli(["up", "--state-dir", str(home)], capsys)
    assert code == 0, err
    assert "warm task server ready" in err
    zygote = warm.connect_existing(home)
    assert zygote is not None, "up started no warm server of the current code"
    try:
        zygote.sock.settimeout(2.0)  # preloaded: it greets a new client at once
        assert zygote.alive()
    finally:
        zygote.close()
