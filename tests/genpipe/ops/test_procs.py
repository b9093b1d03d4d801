"""genpipe.ops.procs: the one liveness check and command-line read (stack, gc, warm server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from genpipe.ops import gc, procs


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited but is not reaped yet (its pid stays, state Z)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return proc
        time.sleep(0.05)
    raise AssertionError(f"child {proc.pid} did not exit")


def test_alive_and_cmdline_of_a_running_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-x"])
    try:
        assert procs.alive(proc.pid)
        assert "marker-x" in (procs.cmdline(proc.pid) or "")
        assert procs.alive(os.getpid())
    finally:
        proc.kill()
        proc.wait()
    # reaped: gone for both
    assert not procs.alive(proc.pid)
    assert procs.cmdline(proc.pid) == ""


def test_a_zombie_counts_as_dead() -> None:
    proc = _zombie()
    try:
        assert not procs.alive(proc.pid)
        assert procs.cmdline(proc.pid) == ""  # no marker: a stale pid file is not trusted
    finally:
        proc.wait()


def test_gc_removes_the_temp_dir_of_a_task_that_became_a_zombie(tmp_path) -> None:
    """A task that exited but is not reaped yet is gone: its temp dir is left behind."""
    proc = _zombie()
    try:
        (tmp_path / f"genpipe-task-{proc.pid}-abc").mkdir()
        found = gc.temp_leftovers(tmp_path)
    finally:
        proc.wait()
    assert [(x.where, x.why) for x in found] == [
        (str(tmp_path / f"genpipe-task-{proc.pid}-abc"), f"process {proc.pid} is gone")
    ]
