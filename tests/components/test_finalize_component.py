"""The pipeline's exit task (components/finalize.py) against the real embedded MLflow: it ends
a run left open by a killed task and never touches one that already ended."""

import uuid

import pytest

from components.finalize import run
from zoo import tracking
from zoo.names import TAG_FAILURE

EXPERIMENT = "genpipe-test-finalize"


def _open_run(status: str = "RUNNING") -> tuple[str, str]:
    """A pipeline run's MLflow run as ingest creates it, left in `status`."""
    c = tracking.client()
    pipeline_run = uuid.uuid4().hex
    run_id = tracking.get_or_create_run(c, EXPERIMENT, pipeline_run, "vae")
    if status in ("FINISHED", "FAILED", "KILLED"):
        c.set_terminated(run_id, status)
    else:
        c.update_run(run_id, status=status)
    return pipeline_run, run_id


@pytest.mark.parametrize("status", ["RUNNING", "SCHEDULED"])
def test_open_run_of_failed_pipeline_ends_failed_with_the_error(stack, status):
    pipeline_run, run_id = _open_run(status)
    got, what = run(EXPERIMENT, pipeline_run, "FAILED", "task train: OOMKilled")
    assert got == run_id and "marked FAILED" in what
    r = tracking.client().get_run(run_id)
    assert r.info.status == "FAILED" and r.info.end_time
    assert r.data.tags[TAG_FAILURE] == "task train: OOMKilled"


def test_cancelled_pipeline_ends_killed(stack):
    pipeline_run, run_id = _open_run()
    run(EXPERIMENT, pipeline_run, "CANCELED", "")
    r = tracking.client().get_run(run_id)
    assert r.info.status == "KILLED" and r.data.tags[TAG_FAILURE] == "pipeline CANCELED"


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_ended_run_is_never_touched(stack, status):
    pipeline_run, run_id = _open_run(status)
    before = tracking.client().get_run(run_id)
    got, what = run(EXPERIMENT, pipeline_run, "FAILED", "boom")
    after = tracking.client().get_run(run_id)
    assert got == run_id and f"already ended {status}" in what
    assert after.info.status == status and after.info.end_time == before.info.end_time
    assert TAG_FAILURE not in after.data.tags


def test_no_run_is_nothing_to_do(stack):
    # ingest failed before creating the run (or before the experiment existed)
    got, what = run(EXPERIMENT, uuid.uuid4().hex, "FAILED", "bad source")
    assert got == "" and "nothing to end" in what
    got, _ = run(f"genpipe-test-none-{uuid.uuid4().hex[:8]}", "x", "FAILED", "bad source")
    assert got == ""
