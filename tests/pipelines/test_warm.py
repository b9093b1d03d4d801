"""pipelines.warm: kfp.local tasks as forks of a preloaded server, with a fallback to subprocesses."""

# No `from __future__ import annotations`: KFP reads the component functions' real types.
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kfp.local
import pytest
from kfp import dsl
from kfp.local import subprocess_task_handler as sth

from pipelines import warm
from zoo.errors import GenpipeError

_ORIGINAL = sth.run_local_subprocess


def env_and_parent(name: str) -> str:
    import os

    return f"{os.environ.get(name, '')}|{os.getppid()}"


def fail_with(kind: str) -> str:
    import os

    if kind == "raise":
        raise ValueError("boom from the task")
    os._exit(3)
    return ""


ENV_TASK = dsl.component(env_and_parent, base_image="python:3.11", install_kfp_package=False)
FAIL_TASK = dsl.component(fail_with, base_image="python:3.11", install_kfp_package=False)


def divide(a: int, b: int) -> float:
    return a / b


def record_pid_and_sleep(path: str, seconds: float) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _server_pid(home: Path) -> int:
    return int(json.loads((home / "warm-server.json").read_text())["pid"])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """One warm server for this module's tests (each start imports TensorFlow & co.)."""
    h = tmp_path_factory.mktemp("warm-home")
    yield h
    warm.stop_server(h)


@pytest.fixture
def local_runner(tmp_path: Path) -> None:
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )


def _command(component) -> list[str]:
    container = component.component_spec.implementation.container
    return [*container.command, *container.args]


def test_parse_command_recognises_our_components_and_refuses_pip_installs():
    from pipelines import factory

    for name, comp in factory.components("python:3.11").items():
        parsed = warm.parse_command(_command(comp))
        assert parsed is not None, name
        source, args = parsed
        assert f"def {name}(" in source
        assert "--function_to_execute" in args and "--executor_input" in args
    with_pip = dsl.component(env_and_parent, base_image="python:3.11", packages_to_install=["x"])
    assert warm.parse_command(_command(with_pip)) is None
    assert warm.parse_command(["python", "-c", "print(1)"]) is None


def test_tasks_run_as_forks_of_the_server_with_the_current_environment(
    home, local_runner, monkeypatch
):
    with warm.warm_tasks(home) as zygote:
        assert zygote is not None and zygote.alive()
        # set after the server started: a task must still see it, as a subprocess would
        monkeypatch.setenv("GENPIPE_TEST_LATE", "late-value")
        value, parent = ENV_TASK(name="GENPIPE_TEST_LATE").output.split("|")
        assert value == "late-value"
        assert int(parent) == zygote.pid  # a fork of the warm session, not a new Python
        assert sth.run_local_subprocess is not _ORIGINAL  # patched within the block only
    assert sth.run_local_subprocess is _ORIGINAL
    assert _wait_gone(zygote.pid)  # the session ends with its client ...
    assert _alive(_server_pid(home))  # ... the server stays for the next run
    with warm.warm_tasks(home) as again:
        assert again.alive() and again.pid != zygote.pid
        _, parent = ENV_TASK(name="HOME").output.split("|")
        assert int(parent) == again.pid


def test_a_failing_task_fails_alone_and_the_session_keeps_serving(home, local_runner, capsys):
    with warm.warm_tasks(home) as zygote:
        with pytest.raises(RuntimeError):
            FAIL_TASK(kind="raise")
        assert "ValueError: boom from the task" in capsys.readouterr().out
        with pytest.raises(RuntimeError):
            FAIL_TASK(kind="exit")  # os._exit(3) in the task
        assert zygote.alive()
        value, _ = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]


def test_call_runs_in_the_server_and_reports_user_errors_as_one_line(home):
    warm._prestarted.clear()
    warm.prestart(home)
    try:
        assert warm._prestarted, "no warm server connection"
        assert warm.call(
            "pipelines.local:check_run_args",
            model="vae",
            preset="tiny",
            overrides={"epochs": 3},
            thresholds="",
        ) == {"epochs": 3}
        with pytest.raises(GenpipeError, match="unknown setting.*'nope'"):
            warm.call(
                "pipelines.local:check_run_args",
                model="vae",
                preset="default",
                overrides={"nope": 1},
                thresholds="",
            )
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            warm.call("tests.pipelines.test_warm:divide", a=1, b=0)
        assert warm.call("tests.pipelines.test_warm:divide", a=6, b=3) == 2
    finally:
        for z in warm._prestarted:
            z.close()
        warm._prestarted.clear()


def test_a_client_that_goes_away_takes_its_running_task_along(home, tmp_path):
    pid_file = tmp_path / "task.pid"
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from pipelines import warm; "
            "z = warm.connect(Path(sys.argv[1])); "
            "z.call('tests.pipelines.test_warm:record_pid_and_sleep', path=sys.argv[2], seconds=120)",
            str(home),
            str(pid_file),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        task = int(pid_file.read_text())
        assert _alive(task)
        client.send_signal(signal.SIGKILL)  # Ctrl-C or a kill of `genpipe run`
        assert _wait_gone(task), "the task outlived its client"
    finally:
        client.kill()
        client.wait()
    assert _alive(_server_pid(home))


def test_without_a_server_tasks_fall_back_to_kfp_subprocesses(home, local_runner, monkeypatch):
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")
    with warm.warm_tasks(home) as zygote:
        assert zygote is None
        value, _ = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "1")
    with warm.warm_tasks(home) as zygote:
        assert zygote.alive()
        os.kill(zygote.pid, signal.SIGKILL)  # the session dies: later tasks still run
        assert _wait_gone(zygote.pid)
        value, parent = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]
        assert int(parent) != zygote.pid


def test_changed_code_or_import_environment_gets_a_new_server_and_idle_ones_stop(home, monkeypatch):
    old = _server_pid(home)
    key = warm.code_key()
    monkeypatch.setenv("TF_GENPIPE_TEST_KNOB", "1")  # read at import time by TF-ish code
    assert warm.code_key() != key
    monkeypatch.setenv("GENPIPE_WARM_IDLE_SECONDS", "2")
    zygote = warm.connect(home)
    try:
        new = _server_pid(home)
        assert new != old
        assert _wait_gone(old), "the server of the old key kept running"
        assert zygote.alive()
    finally:
        zygote.close()
    assert _wait_gone(new, seconds=30), "an idle server did not stop"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GENPIPE_WARM_TASKS", "maybe"),
        ("GENPIPE_WARM_IDLE_SECONDS", "soon"),
        ("GENPIPE_WARM_IDLE_SECONDS", "0"),
    ],
)
def test_bad_settings_are_refused_naming_the_value_and_start_nothing(
    var, value, tmp_path, monkeypatch
):
    monkeypatch.setenv(var, value)
    with pytest.raises(GenpipeError, match=f"{var}='{value}'"), warm.warm_tasks(tmp_path):
        pass
    assert not (tmp_path / "warm-server.json").exists()


def test_start_in_background_starts_a_server_that_runs_reuse(tmp_path, monkeypatch):
    """`genpipe up` starts the server so the first run finds it warm; off means off."""
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")
    assert warm.start_in_background(tmp_path) is False
    assert not (tmp_path / "warm-server.json").exists()
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "1")
    try:
        assert warm.start_in_background(tmp_path) is True
        pid = _server_pid(tmp_path)
        assert _alive(pid)
        zygote = warm.connect(tmp_path)
        try:
            assert zygote.alive() and _server_pid(tmp_path) == pid  # reused, not restarted
        finally:
            zygote.close()
    finally:
        warm.stop_server(tmp_path)
