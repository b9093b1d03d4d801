"""RunLogger and run_status cost few MLflow round trips (real MLflow server; each request is
40-100 ms on a loaded machine): metrics, params and tags of one call go in one log_batch, a
known run's params are not read again, and checking a RUNNING run's status is one read."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from zoo import tracking
from zoo.errors import GenpipeError
from zoo.runlog import MAX_PARAMS_PER_BATCH


def _new_run():
    c = tracking.client()
    return c, tracking.get_or_create(c, "genpipe-test-runlog", uuid.uuid4().hex, "vae")


def test_metrics_params_and_tags_of_one_call_are_one_request(mlflow_requests):
    c, run = _new_run()
    logger = tracking.RunLogger(c, run.info.run_id, params=run.data.params)
    with mlflow_requests(short=True) as seen:
        logger.log(metrics={"a": 1.0, "b": 2.0}, params={"p": 1, "q": "x"}, tags={"t": "v"})
    assert dict(seen) == {"POST log-batch": 1}  # the new run's params were known: no read
    data = c.get_run(run.info.run_id).data
    assert data.metrics == {"a": 1.0, "b": 2.0}
    assert data.params == {"p": "1", "q": "x"} and data.tags["t"] == "v"


def test_a_retry_relogs_nothing_and_a_changed_param_fails_before_logging(mlflow_requests):
    c, run = _new_run()
    run_id = run.info.run_id
    tracking.RunLogger(c, run_id).log(params={"p": "1"}, tags={"t": "1"})
    retried = tracking.RunLogger(c, run_id)  # a retried task: reads the params once
    with mlflow_requests(short=True) as seen:
        retried.params({"p": "1"})
        retried.params({"p": "1"})
    assert dict(seen) == {"GET get": 1}  # nothing new to log, and read once
    with pytest.raises(GenpipeError, match="already has different values for \\['p'\\]"):
        retried.log(params={"p": "2"}, tags={"t": "2"})
    assert c.get_run(run_id).data.tags["t"] == "1"  # nothing of that call was logged


def test_over_mlflows_batch_limits_splits_into_several_requests(mlflow_requests):
    c, run = _new_run()
    logger = tracking.RunLogger(c, run.info.run_id, params={})
    params = {f"p{i}": i for i in range(MAX_PARAMS_PER_BATCH + 5)}
    with mlflow_requests(short=True) as seen:
        logger.log(params=params, metrics={"m": 1.0})
    assert dict(seen) == {"POST log-batch": 2}
    assert len(c.get_run(run.info.run_id).data.params) == len(params)


def test_checking_a_running_runs_status_is_one_read(mlflow_requests):
    """Each task checks its run's status on entry and exit; a RUNNING run (the usual case)
    costs one read each, not MlflowClient.update_run's read and write."""
    c, run = _new_run()
    with mlflow_requests(short=True) as seen, tracking.run_status(run.info.run_id) as status:
        assert status.run.info.run_id == run.info.run_id  # handed to the task
    assert dict(seen) == {"GET get": 2}
    assert c.get_run(run.info.run_id).info.status == "RUNNING"


@pytest.mark.parametrize("plain", [False, True], ids=["bounded-client", "plain-client"])
def test_a_file_into_a_run_of_known_artifact_uri_is_one_upload(mlflow_requests, plain):
    """With the run's artifact URI at hand, a file is one upload, whichever MLflow client the
    logger got (a plain MlflowClient used to fall back to log_artifact, which reads the run)."""
    from mlflow.tracking import MlflowClient

    c, run = _new_run()
    client = MlflowClient(c.tracking_uri) if plain else c
    logger = tracking.RunLogger(client, run.info.run_id, artifact_uri=run.info.artifact_uri)
    with mlflow_requests(short=True) as seen:
        logger.text("hello", "notes/hello.txt")
    assert list(seen) == ["PUT hello.txt"] and sum(seen.values()) == 1
    got = tracking.artifact_repo(run.info.artifact_uri).download_artifacts("notes/hello.txt")
    assert Path(got).read_text() == "hello"


def test_a_background_logger_does_not_wait_and_lands_everything_in_order(stack):
    """background=True (the train task's logger): each call returns before its request is
    answered (the trainer waited ~0.02-0.06 s per epoch on them); after flush() the metrics,
    params and files are all on the run, a later value of a metric after an earlier one."""
    import time

    from mlflow_rounds import mlflow_rounds

    c, run = _new_run()
    run_id = run.info.run_id
    logger = tracking.RunLogger(
        c, run_id, params=run.data.params, artifact_uri=run.info.artifact_uri, background=True
    )
    try:
        with mlflow_rounds(delay=0.3) as rounds:
            t0 = time.perf_counter()
            logger.params({"preset": "tiny"})
            logger.metrics({"loss": 2.0}, step=1)
            logger.text("hello", "samples/epoch_001.txt")
            logger.metrics({"loss": 1.0}, step=2)
            returned = time.perf_counter() - t0
            logger.flush()
        assert returned < 0.3 and rounds.count == 4 and rounds.depth == 4, rounds.chain()
        with pytest.raises(GenpipeError):  # a changed param still fails at the call
            logger.params({"preset": "default"})
    finally:
        logger.close()
    history = c.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    assert c.get_run(run_id).data.params == {"preset": "tiny"}
    assert [f.path for f in c.list_artifacts(run_id, "samples")] == ["samples/epoch_001.txt"]


def test_a_failed_background_request_is_raised(stack):
    """A request that failed in the background raises at flush() (and at the next call)."""
    c = tracking.client()
    logger = tracking.RunLogger(c, uuid.uuid4().hex, params={}, background=True)
    try:
        logger.metrics({"loss": 1.0}, step=1)
        with pytest.raises(Exception, match="(?i)run"):
            logger.flush()
        logger.metrics({"loss": 1.0}, step=2)
        while not all(f.done() for f in logger._sent):
            pass
        with pytest.raises(Exception, match="(?i)run"):
            logger.metrics({"loss": 1.0}, step=3)
    finally:
        logger.close()
