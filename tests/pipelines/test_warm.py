"""pipelines.warm: kfp.local tasks as forks of a preloaded zygote, with a fallback to subprocesses."""

# No `from __future__ import annotations`: KFP reads the component functions' real types.
import os
from pathlib import Path

import kfp.local
import pytest
from kfp import dsl
from kfp.local import subprocess_task_handler as sth

from pipelines import warm
from zoo.errors import GenpipeError


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


def test_tasks_run_as_forks_of_the_zygote_with_the_current_environment(local_runner, monkeypatch):
    with warm.warm_tasks() as zygote:
        assert zygote is not None and zygote.alive()
        # set after the zygote started: a task must still see it, as a subprocess would
        monkeypatch.setenv("GENPIPE_TEST_LATE", "late-value")
        value, parent = ENV_TASK(name="GENPIPE_TEST_LATE").output.split("|")
        assert value == "late-value"
        assert int(parent) == zygote.proc.pid  # a fork of the warm process, not a new Python
        # the patch is scoped to the block
        assert sth.run_local_subprocess is not warm_original()
    assert sth.run_local_subprocess is warm_original()
    assert zygote.proc.poll() is not None  # stopped with the block


def warm_original():
    return _ORIGINAL


_ORIGINAL = sth.run_local_subprocess


def test_a_failing_task_fails_alone_and_the_zygote_keeps_serving(local_runner, capsys):
    with warm.warm_tasks() as zygote:
        with pytest.raises(RuntimeError):
            FAIL_TASK(kind="raise")
        assert "ValueError: boom from the task" in capsys.readouterr().out
        with pytest.raises(RuntimeError):
            FAIL_TASK(kind="exit")  # os._exit(3) in the task
        assert zygote.alive()
        value, _ = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]


def test_without_a_zygote_tasks_fall_back_to_kfp_subprocesses(local_runner, monkeypatch):
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")
    with warm.warm_tasks() as zygote:
        assert zygote is None
        value, _ = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "1")
    with warm.warm_tasks() as zygote:
        zygote.proc.kill()  # dies: the next task must still run, as a plain subprocess
        zygote.proc.wait()
        value, parent = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]
        assert int(parent) != zygote.proc.pid


def test_call_runs_in_the_zygote_and_reports_user_errors_as_one_line():
    warm._prestarted.clear()
    warm.prestart()
    try:
        zygote = warm._prestarted[0]
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
        assert zygote.alive()
        zygote.proc.kill()
        zygote.proc.wait()
        # a dead zygote: the call runs in this process instead
        assert warm.call("tests.pipelines.test_warm:divide", a=6, b=3) == 2
    finally:
        for z in warm._prestarted:
            z.close()
        warm._prestarted.clear()


def divide(a: int, b: int) -> float:
    return a / b
