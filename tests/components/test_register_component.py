"""Register, the pipeline's last task, records its outcome on the run and ends the run in one
round trip (real MLflow server)."""

import uuid

from components import register
from zoo import names, tracking
from zoo.registration import RegisterResult


def test_the_outcome_and_the_runs_end_go_out_together(stack):
    from mlflow_rounds import mlflow_rounds

    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-register", uuid.uuid4().hex, "vae")
    result = RegisterResult("m", "3", ["candidate", "champion"], True, "better")
    with tracking.run_status(run_id, final=True), mlflow_rounds() as rounds:
        register._record_and_finish(c, run_id, result)
    # before: the tags, then (run_status's exit) the end: 2 round trips
    assert (rounds.count, rounds.depth) == (2, 1), rounds.chain()
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_REGISTERED_VERSION] == "3"
    assert run.data.tags[names.TAG_ALIASES] == "candidate,champion"
