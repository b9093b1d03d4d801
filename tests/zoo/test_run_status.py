"""The MLflow run's status tells the truth about the pipeline task (real MLflow server):
RUNNING while a task runs, FAILED when it raises, KILLED on SIGTERM, FINISHED only when the
last task succeeds; registered-model names MLflow would refuse are refused up front."""

import subprocess
import sys
import textwrap
import uuid

import pytest

from zoo import tracking
from zoo.errors import ConfigError, TrainingDiverged


def _new_run() -> str:
    c = tracking.client()
    return tracking.get_or_create_run(c, "genpipe-test-status", f"status-{uuid.uuid4().hex}", "vae")


def _status(run_id: str) -> str:
    return tracking.client().get_run(run_id).info.status


def test_failed_task_marks_run_failed_and_retry_reopens_it(stack):
    run_id = _new_run()
    with pytest.raises(TrainingDiverged), tracking.run_status(run_id):
        assert _status(run_id) == "RUNNING"
        raise TrainingDiverged("vae: training diverged at step 3")
    assert _status(run_id) == "FAILED"
    with tracking.run_status(run_id):  # a retried task: the run is running again
        assert _status(run_id) == "RUNNING"
    assert _status(run_id) == "RUNNING"  # not the last task: not finished yet
    with tracking.run_status(run_id) as status:
        status.final = True
    assert _status(run_id) == "FINISHED"


def test_nested_start_run_block_does_not_finish_a_running_pipeline(stack):
    """`with mlflow.start_run(run_id)` (as MLflow's log_model needs) ends the run FINISHED on
    exit; a task that is not the last one puts it back to RUNNING."""
    import mlflow

    run_id = _new_run()
    with tracking.run_status(run_id), mlflow.start_run(run_id=run_id):
        pass
    assert _status(run_id) == "RUNNING"


def test_sigterm_marks_run_killed(stack):
    run_id = _new_run()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from zoo import tracking
                with tracking.run_status({run_id!r}):
                    print("ready", flush=True)
                    time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        child.terminate()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0
    assert _status(run_id) == "KILLED"


@pytest.mark.parametrize("name", ["a/b", "team:vae", "vae@2", " ", "..", "."])
def test_registered_names_mlflow_refuses_are_refused_up_front(stack, name):
    with pytest.raises(ConfigError, match="--name .* is not a valid registered model name"):
        tracking.check_registered_name(name)
    # The contract we mirror: the real registry refuses the same names ('@' is our own rule:
    # it separates the alias in NAME@ALIAS references).
    if "@" not in name:
        import mlflow

        with pytest.raises(mlflow.exceptions.MlflowException):
            tracking.client().create_registered_model(name)


def test_valid_registered_name_is_accepted(stack):
    name = f"vae digits-{uuid.uuid4().hex[:6]}_v1.0"
    assert tracking.check_registered_name(name) == name
    tracking.client().create_registered_model(name)


def test_bad_retry_budget_is_one_error_naming_it(monkeypatch):
    monkeypatch.setenv("GENPIPE_RETRY_SECONDS", "soon")
    with pytest.raises(ConfigError, match="GENPIPE_RETRY_SECONDS='soon'"):
        tracking.retry_seconds()


def test_waiting_line_is_a_pipeline_event(tmp_path):
    """A task's 'waiting for ...' line reaches `genpipe run`'s screen as an event."""
    from pipelines.local import _EventStream

    events = []
    with open(tmp_path / "log", "w") as log:
        stream = _EventStream(log, lambda kind, f: events.append((kind, f)))
        stream.write("Executing task 'train'\n")
        stream.write(
            "waiting for MLflow at http://127.0.0.1:5000: connection refused "
            "(retrying for up to 120 s)\n"
        )
    assert ("waiting", {"task": "train", "message": events[-1][1]["message"]}) == events[-1]
    assert events[-1][1]["message"].startswith("waiting for MLflow at http://127.0.0.1:5000")


def test_a_task_that_finishes_its_run_is_not_ended_twice(stack, mlflow_requests):
    """`finish` (the last task, beside its last writes) ends the run once: the final
    run_status does not send a second update (the old exit always sent one); an error after
    it still marks the run FAILED, and a task that is not the last one re-opens it."""
    run_id = _new_run()
    with mlflow_requests(short=True) as seen, tracking.run_status(run_id, final=True):
        tracking.finish(run_id)
    assert _status(run_id) == "FINISHED"
    assert seen["POST update"] == 1, seen

    run_id = _new_run()
    with pytest.raises(RuntimeError), tracking.run_status(run_id, final=True):
        tracking.finish(run_id)
        raise RuntimeError("after the end")
    assert _status(run_id) == "FAILED"

    run_id = _new_run()
    with tracking.run_status(run_id):
        tracking.finish(run_id)
    assert _status(run_id) == "RUNNING"
