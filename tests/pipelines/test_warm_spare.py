"""pipelines.warm_spare: a session's children forked before their request, released before
their process is gone (the fork and the exit are no longer between two pipeline tasks)."""

# No `from __future__ import annotations`: KFP reads the component functions' real types.
import json
import os
import signal
import socket
import time
from pathlib import Path

import kfp.local
import pytest
from kfp import dsl

from pipelines import warm, warm_spare, warm_wire


def _start_seconds_ago(linger: float = 0.0) -> float:
    """How long ago this process was forked (from /proc: its start time in clock ticks);
    returns after `linger` more seconds (a task long enough to get the next one's spare)."""
    import os
    import time

    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / ticks
    with open("/proc/uptime") as f:
        age = float(f.read().split()[0]) - started
    time.sleep(linger)
    return age


AGE_TASK = dsl.component(_start_seconds_ago, base_image="python:3.11", install_kfp_package=False)


def _spare_and_client(run: warm_spare.Runner) -> tuple[warm_spare.Spare, socket.socket, int]:
    """A spare of this process, the session's end of a client socket, and the read end of
    the output pipe the spare's request carries."""
    client, session = socket.socketpair()
    spare = warm_spare.Spare(run, close=(session,))
    read_fd, write_fd = os.pipe()
    spare.start(json.dumps({"x": 1}).encode(), write_fd)
    os.close(write_fd)
    return spare, session, read_fd


def _write_and_return(code: int) -> warm_spare.Runner:
    def run(request: dict, out_fd: int) -> int:
        os.dup2(out_fd, 1)
        os.close(out_fd)
        os.write(1, f"request {request['x']}\n".encode())
        return code

    return run


def test_the_code_and_the_output_arrive_before_the_child_has_exited(monkeypatch):
    """What the child does after it reported (its exit: page tables, copied pages) no longer
    delays the client: here that exit is made to take 5 s."""
    real_exit = os._exit

    def slow_exit(code: int) -> None:
        time.sleep(5)
        real_exit(code)

    monkeypatch.setattr(os, "_exit", slow_exit)  # before the fork: the spare's exit
    spare, session, read_fd = _spare_and_client(_write_and_return(7))
    monkeypatch.setattr(os, "_exit", real_exit)
    t0 = time.monotonic()
    with os.fdopen(read_fd) as out:
        assert out.read() == "request 1\n"  # EOF: the pipe was let go of
    assert spare.wait(session) == 7
    assert time.monotonic() - t0 < 4, "waited for the child's exit"
    assert not spare.reap()  # still exiting
    os.waitpid(spare.pid, 0)


def test_a_child_that_dies_without_reporting_is_reported_by_its_exit_status():
    def killed(request: dict, out_fd: int) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    spare, session, read_fd = _spare_and_client(killed)
    assert spare.wait(session) == -signal.SIGKILL
    os.close(read_fd)
    spare2, session2, read_fd2 = _spare_and_client(_write_and_return(256 + 3))
    assert spare2.wait(session2) == 3  # what os._exit(259) leaves, as before
    os.close(read_fd2)
    while not spare2.reap():
        time.sleep(0.01)


def test_an_unused_spare_exits_when_discarded():
    client, session = socket.socketpair()
    spare = warm_spare.Spare(_write_and_return(0), close=(session,))
    spare.discard()
    _, status = os.waitpid(spare.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _local(tmp_path: Path) -> None:
    """kfp.local in-process, as `genpipe run` drives it."""
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    h = tmp_path_factory.mktemp("warm-spare-home")
    yield h
    warm.stop_server(h)


def test_each_task_process_was_forked_before_its_request(home, tmp_path):
    _local(tmp_path)
    with warm.warm_tasks(home) as zygote:
        assert zygote is not None and zygote.alive()
        # the session's first spare, then the one forked while the first task ran
        time.sleep(1.0)
        assert AGE_TASK(linger=1.0).output > 0.6, "the task's process was forked on request"
        assert AGE_TASK().output > 0.6, "the task's process was forked on its request"
        # a short task (a pipeline's last) gets no spare beside it: the next is forked then
        time.sleep(1.0)
        assert AGE_TASK().output < 0.6


def test_a_short_first_task_gets_the_next_ones_child_forked_when_it_ends(home, tmp_path):
    """A session's first task (a pipeline's ingest, ~0.1 s) may end before the next task's
    child would be forked beside it (pipelines.warm_spare.MEANWHILE_AFTER_S): that child is
    then forked as soon as it ended, not on the next request (a pipeline's first task is
    never its last). Three sessions: the old code forked on request after any first task
    that was over in time."""
    _local(tmp_path)
    # a task that is over in milliseconds (its module exits 0 as kfp loads it)
    script = f"python3 -m {warm_wire._EXECUTOR} ephemeral_component.py"
    quick = ["sh", "-ec", script, "raise SystemExit(0)", "--function_to_execute", "f"]
    for _ in range(3):
        with warm.warm_tasks(home) as zygote:
            assert zygote is not None and zygote.alive()
            assert zygote.run([*quick, "--executor_input", "{}"], None) == 0
            time.sleep(0.7)
            assert AGE_TASK().output > 0.5, "the second task's process was forked on request"


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, unreaped
    except FileNotFoundError:
        return True


def test_a_session_leaves_no_process_behind(home, tmp_path):
    _local(tmp_path)
    with warm.warm_tasks(home) as zygote:
        AGE_TASK(linger=1.0)
        session = zygote.pid
        children = Path(f"/proc/{session}/task/{session}/children").read_text().split()
        assert children, "no spare was forked while the task ran"
    deadline = time.monotonic() + 20
    left = [session, *map(int, children)]
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if not _gone(pid)]
        time.sleep(0.1)
    assert not left, "the session or its spare outlived the client"


def test_a_new_client_gets_a_session_and_a_child_forked_before_it_connected(home, tmp_path):
    _local(tmp_path)
    with warm.warm_tasks(home) as zygote:  # the server is up and its next session waits
        assert zygote is not None and zygote.alive()
    time.sleep(1.5)
    with warm.warm_tasks(home) as zygote:
        assert zygote is not None and zygote.alive()
        ticks = os.sysconf("SC_CLK_TCK")
        stat = Path(f"/proc/{zygote.pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        assert uptime - int(stat[19]) / ticks > 1.0, "the session was forked on connect"
        assert AGE_TASK().output > 1.0, "the first task's process was forked on its request"


def _start_faults() -> str:
    """The page faults of one walk over sys.modules' names, as the task's first thing."""
    import resource
    import sys

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    names = set(sys.modules)
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before} {len(names)}"


FAULTS_TASK = dsl.component(_start_faults, base_image="python:3.11", install_kfp_package=False)


def test_a_tasks_start_does_not_copy_the_servers_module_table(home, tmp_path, monkeypatch):
    """A fork shares the server's memory until it writes to it. The start of each task took a
    reference to each of the ~6,500 module names (a set of sys.modules, for a debug-only
    list), which wrote ~3,000 shared pages: ~15 ms of page faults per task. Now those pages
    are still shared when the task's function runs: its own walk is the one that copies them
    (the old start left it ~60 faults to take)."""
    _local(tmp_path)
    monkeypatch.delenv("GENPIPE_WARM_DEBUG", raising=False)
    with warm.warm_tasks(home) as zygote:
        assert zygote is not None and zygote.alive()
        walk, modules = map(int, FAULTS_TASK().output.split())
    assert modules > 1000  # the preloaded server's table
    assert walk > modules // 5, f"{walk} faults: the task's start had copied the table already"


def _import_wave() -> int:
    import os
    import wave  # noqa: F401  (not preloaded: the task imports it itself)

    return os.getpid()


WAVE_TASK = dsl.component(_import_wave, base_image="python:3.11", install_kfp_package=False)


def test_the_debug_list_names_the_modules_a_task_imported_itself(home, tmp_path, monkeypatch):
    """GENPIPE_WARM_DEBUG=1: each task writes what it imported beyond the preload to
    $TMPDIR/genpipe-warm-<pid>.txt (what to add to PRELOAD)."""
    _local(tmp_path)
    monkeypatch.setenv("GENPIPE_WARM_DEBUG", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with warm.warm_tasks(home):
        pid = WAVE_TASK().output
    listed = (tmp_path / f"genpipe-warm-{pid}.txt").read_text().split("\n")
    assert "wave" in listed and "os" not in listed
