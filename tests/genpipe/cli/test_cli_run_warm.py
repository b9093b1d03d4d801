"""`genpipe run` through the warm task server (issue 14): the whole run (checks, kfp.local,
result) happens in a fork of the server, so the CLI process imports neither kfp, TensorFlow,
MLflow nor minio; a failing task still reaches the user as one line; Ctrl-C still kills the
run's task; without the server the very same run happens in the CLI process."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from proc_helpers import default_sigint, descendants

HEAVY = {"kfp", "tensorflow", "keras", "mlflow", "minio", "kubernetes"}
LOOSE = '{"test_neg_elbo": {"max": 1e9}}'


def _env(home: Path, **extra: str) -> dict[str, str]:
    # TF_CPP_MIN_LOG_LEVEL as the CLI sets it: the code key of the server it starts
    return {**os.environ, "GENPIPE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def genpipe_run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`genpipe run ARGS` as a user runs it; -X importtime lists every module it imports."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "genpipe", "run", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(home, **env),
    )


def imported(stderr: str) -> set[str]:
    """Top-level packages in -X importtime's output ('import time: ... | pkg.mod')."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _said(stderr: str) -> list[str]:
    """What the command wrote to stderr, without -X importtime's lines."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("import time:")]


def _bad_idx(tmp_path: Path) -> Path:
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    return bad


def test_a_warm_run_happens_in_the_server_and_the_cli_imports_nothing_heavy(stack):
    name = f"vae-warmrun-{uuid.uuid4().hex[:8]}"
    args = ["vae", "--preset", "tiny", "--set", "epochs=1", "--set", "steps_per_epoch=2"]
    # wide enough for rich not to fold the paths it prints
    out = genpipe_run(stack.state_dir, *args, "--name", name, "--thresholds", LOOSE, COLUMNS="500")
    assert out.returncode == 0, out.stderr[-3000:]
    # The pipeline ran (a registered version) and this process never imported kfp & co.
    assert not HEAVY & imported(out.stderr), HEAVY & imported(out.stderr)
    assert f"registered:   {name} v1 aliases=" in out.stdout
    # the evaluation's report, downloaded where the CLI says it is
    report = re.findall(r"^report\.html:\s+(\S+)$", out.stdout, re.MULTILINE)
    assert len(report) == 1 and Path(report[0]).is_file(), out.stdout
    assert out.stdout.startswith("genpipe run vae on digits (tiny config: epochs=1)")
    said = "\n".join(_said(out.stderr))
    for task in ("ingest", "train", "evaluate", "register"):  # the progress bars, as before
        assert f"  {task} " in said and "done" in said, said
    # The run's log was written by the server's fork, next to the state dir as before.
    assert list((stack.state_dir / "logs").glob("run-vae-*.log"))


def test_a_failing_task_reaches_the_user_as_one_line_warm_and_in_process(stack, tmp_path):
    bad = _bad_idx(tmp_path)
    args = ["vae", "--data", f"idx:{tmp_path}", "--preset", "tiny", "--name", "vae-badw"]
    hot = genpipe_run(stack.state_dir, *args)
    assert hot.returncode == 1, hot.stderr[-3000:]
    assert not HEAVY & imported(hot.stderr)
    errors = [ln for ln in _said(hot.stderr) if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: task ingest failed:"), hot.stderr
    assert bad.name in errors[0] and "full log:" in errors[0]
    # The fallback (no warm server): the same run, in this process, the same line.
    cold = genpipe_run(stack.state_dir, *args, GENPIPE_WARM_TASKS="0")
    assert cold.returncode == 1, cold.stderr[-3000:]
    assert "kfp" in imported(cold.stderr)  # it really ran here
    cold_errors = [ln for ln in _said(cold.stderr) if ln.startswith("error:")]
    assert [e.split(" (full log:")[0] for e in cold_errors] == [errors[0].split(" (full log:")[0]]


def _training(home: Path, tmp: Path, **env: str) -> tuple[subprocess.Popen, list[int], str]:
    """`genpipe run` of a long tiny VAE, as a user starts it in a terminal, once its train
    task is training: (the CLI, the train task's pids, its --name). With warm tasks each task
    makes a genpipe-task-<pid>-* dir in TMPDIR (pipelines.warm_server); without, the task's
    processes are found by their command line."""
    logs = home / "logs"
    before = set(logs.glob("run-vae-*.log"))
    name = f"vae-int-{uuid.uuid4().hex[:6]}"
    args = ["run", "vae", "--preset", "tiny", "--set", "epochs=50", "--set", "steps_per_epoch=5"]
    cli = subprocess.Popen(
        [sys.executable, "-m", "genpipe", *args, "--name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(home, TMPDIR=str(tmp), COLUMNS="400", **env),
        preexec_fn=default_sigint,  # Ctrl-C must work even if this suite ignores SIGINT
    )
    # Train is running once the run's log has its first progress line.
    deadline = time.monotonic() + 600
    tasks: list[int] = []
    while not tasks and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.5)
        new = set(logs.glob("run-vae-*.log")) - before
        if new and "genpipe-progress" in next(iter(new)).read_text(errors="replace"):
            tasks = [int(d.name.split("-")[2]) for d in tmp.glob("genpipe-task-*")]
            tasks += [p for p in descendants(cli.pid) if b"--function_to_execute" in _argv(p)]
    assert tasks, cli.poll()
    return cli, tasks, name


def _interrupted_run(stderr: str, name: str) -> str:
    """The MLflow run id `genpipe run` named in its one line after Ctrl-C (which also says how
    it ended and the command that resumes it)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("interrupted: ")]
    assert len(lines) == 1, stderr[-3000:]
    found = re.fullmatch(
        r"interrupted: MLflow run (\w{32}) ended KILLED; resume it with: genpipe run vae "
        rf"--preset tiny --name {name} --set epochs=50 --set steps_per_epoch=5 --resume (\w{{32}})",
        lines[0],
    )
    assert found and found[1] == found[2], lines[0]
    return found[1]


def test_ctrl_c_kills_the_runs_task_and_the_server_stays(stack, store, tmp_path):
    """Ctrl-C of `genpipe run` (SIGINT to the CLI) ends the run in the server: its task
    stops at once and marks its MLflow run KILLED before the CLI exits (130, one line that
    names the run and how to resume it); its checkpoint stays; the task processes go, the
    server stays for the next run. (Before: the task was SIGKILLed, its run left RUNNING.)"""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cli, tasks, name = _training(stack.state_dir, tmp)
    try:
        server = int(json.loads((stack.state_dir / "warm-server.json").read_text())["pid"])
        run_procs = set(descendants(server))  # its sessions, the run's fork, the train task
        assert set(tasks) <= run_procs
        task_session = _parent(tasks[0])
        t0 = time.monotonic()
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=60)
        took = time.monotonic() - t0
        assert cli.returncode == 130, stderr[-2000:]  # 128 + SIGINT, as a shell says
        assert took < 10, took  # measured 0.2 s
        run_id = _interrupted_run(stderr, name)
        # Ended when the CLI is back, not later: the task itself said so
        from zoo import checkpoints, names, tracking

        run = tracking.client().get_run(run_id)
        assert run.info.status == "KILLED" and names.TAG_FAILURE not in run.data.tags
        assert checkpoints.resume_point(store, run_id) is not None  # what --resume needs

        def left() -> set[int]:
            return {p for p in run_procs & set(descendants(server)) if not _gone(p)}

        def only_the_waiting_session(procs: set[int]) -> bool:
            """What may stay: the session the server keeps forked for its next client, with
            its first child (pipelines.warm_server._waiting_session); nothing of the run."""
            top = [p for p in procs if _parent(p) == server]
            return len(top) <= 1 and all(_parent(p) in (server, *top) for p in procs)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not only_the_waiting_session(left()):
            time.sleep(0.2)
        assert only_the_waiting_session(left()), "the run outlived its client"
        assert task_session not in left()
        assert all(_gone(t) for t in tasks)
        assert not _gone(server)  # the next run reuses it
        # The task removed its temp dirs as it ended (a SIGKILLed one left them to `genpipe gc`)
        assert not list(tmp.glob("genpipe-*")), list(tmp.iterdir())
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_ctrl_c_without_the_warm_server_stops_the_task_too(stack, tmp_path):
    """GENPIPE_WARM_TASKS=0 (tasks are kfp.local subprocesses of the CLI): Ctrl-C to the CLI
    alone stops the task as well (before: it kept training, orphaned, until a write to its
    closed pipe failed it), and the run ends KILLED with the same line."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cli, tasks, name = _training(stack.state_dir, tmp, GENPIPE_WARM_TASKS="0")
    try:
        t0 = time.monotonic()
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=60)
        took = time.monotonic() - t0
        assert cli.returncode == 130, stderr[-2000:]
        assert took < 10, took  # measured 1.5-2 s
        run_id = _interrupted_run(stderr, name)
        from zoo import tracking

        assert tracking.client().get_run(run_id).info.status == "KILLED"
        assert all(_gone(t) for t in tasks), [t for t in tasks if not _gone(t)]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_a_second_ctrl_c_exits_at_once_and_the_run_still_ends(stack, tmp_path):
    """A task that does not stop (here: SIGSTOPped) keeps the first Ctrl-C waiting; a second
    one exits at once; the task is killed within the grace (warm_spare.STOP_GRACE_S) and the
    run's fork, which outlives it, ends its MLflow run KILLED."""
    from pipelines.warm_spare import STOP_GRACE_S
    from zoo import names, tracking

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cli, tasks, name = _training(stack.state_dir, tmp)
    try:
        for t in tasks:
            os.kill(t, signal.SIGSTOP)
        cli.send_signal(signal.SIGINT)
        time.sleep(2)
        assert cli.poll() is None  # waiting for the task to end
        t0 = time.monotonic()
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=30)
        assert cli.returncode == 130 and time.monotonic() - t0 < 3, stderr[-2000:]
        [line] = [ln for ln in stderr.splitlines() if ln.startswith("interrupted: ")]
        run_id = re.findall(r"--resume (\w{32})$", line)[0]
        deadline = time.monotonic() + 2 * STOP_GRACE_S + 10
        run = tracking.client().get_run(run_id)
        while run.info.status == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
            run = tracking.client().get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags[names.TAG_FAILURE] == "interrupted"
        assert all(_gone(t) for t in tasks)
    finally:
        for t in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(t, signal.SIGKILL)
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_ctrl_c_at_the_first_task_leaves_nothing_behind(stack, tmp_path):
    """Ctrl-C as soon as the first task (ingest) runs, before it opened its MLflow run: the
    task unwinds (was: SIGKILL, then SIG_DFL for SIGTERM) and removes its temp dir; one line,
    exit 130."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cli = subprocess.Popen(
        [sys.executable, "-m", "genpipe", "run", "vae", "--preset", "tiny", "--name", "vae-int0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(stack.state_dir, TMPDIR=str(tmp), COLUMNS="400"),
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp.glob("genpipe-task-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(tmp.glob("genpipe-task-*")), cli.poll()
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=60)
        assert cli.returncode == 130, stderr[-2000:]
        assert len([ln for ln in stderr.splitlines() if ln.startswith("interrupted")]) == 1
        assert not list(tmp.glob("genpipe-*")), list(tmp.iterdir())
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def _argv(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        return 0


def _gone(pid: int) -> bool:
    """Exited (or a zombie not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
