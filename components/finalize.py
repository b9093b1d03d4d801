"""Finalize: the pipeline's exit task ends an MLflow run its tasks could not end themselves.

Each component marks the run's status itself (zoo.tracking.run_status), but a task killed
outright (SIGKILL, the OOM killer, a lost node, its last retry used up) dies before it can:
its run would stay RUNNING forever. The factory wraps the pipeline in a `dsl.ExitHandler`
whose exit task is this component, so it runs after every pipeline run, on a cluster as
locally (kfp.local runs exit tasks too), and gets the pipeline's final status.
"""

# No `from __future__ import annotations` here: KFP reads the component signature's real types.
from kfp import dsl

#: run statuses that mean "nobody ended it": the only ones finalize changes
OPEN_STATUSES = ("RUNNING", "SCHEDULED")


def run(experiment: str, pipeline_run_id: str, state: str, error_message: str) -> tuple[str, str]:
    """End the pipeline run's MLflow run if it is still open; returns (run id or "", what was
    done in words).

    `state` is the pipeline's final state (SUCCEEDED, FAILED, CANCELED, ...). A run that is
    already FINISHED, FAILED or KILLED is never touched; no run (ingest failed before creating
    it) is nothing to do. An open run of a failed pipeline becomes FAILED (KILLED when the
    pipeline was cancelled), with the pipeline's error message as the tag genpipe.failure.
    """
    from zoo import names, tracking

    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    found = (
        c.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{names.TAG_PIPELINE_RUN}` = '{pipeline_run_id}'",
            max_results=1,
        )
        if exp
        else []
    )
    if not found:
        return "", f"no MLflow run for pipeline run {pipeline_run_id}: nothing to end"
    run_id, status = found[0].info.run_id, found[0].info.status
    if status not in OPEN_STATUSES:
        return run_id, f"MLflow run {run_id} already ended {status}"
    if state == "SUCCEEDED":
        # Every successful path ends the run in its last task; an open run here means that
        # task could not reach MLflow at the very end. The pipeline did succeed: say so.
        verdict = "FINISHED"
    else:
        verdict = "KILLED" if state in ("CANCELED", "CANCELLED", "CANCELING") else "FAILED"
        message = (error_message or f"pipeline {state or 'failed'}").strip()
        c.set_tag(run_id, names.TAG_FAILURE, message[:5000])  # MLflow's tag value limit is larger
    c.set_terminated(run_id, verdict)
    return run_id, f"MLflow run {run_id} was {status}: marked {verdict} (pipeline {state})"


def finalize(experiment: str, pipeline_run_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """KFP interface of finalize (imports inside: KFP runs this function's source alone).

    Returns the MLflow run id ("" when there is none): the pipeline's output, as a pipeline
    may not return an output of a task inside its exit handler.
    """
    from components.finalize import run

    run_id, what = run(experiment, pipeline_run_id, status.state or "", status.error_message or "")
    print(f"finalize: {what}")
    return run_id
