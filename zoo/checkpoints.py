"""Checkpoints in the object store: what is kept, what is dropped, and resuming another run.

A run's checkpoints live under `s3://<bucket>/checkpoints/<mlflow run id>/`, one folder per
checkpoint and a `latest.json` pointer written last (zoo.train_checkpoint.Checkpointer). Only what a
resume needs is kept:

* while a run trains, the newest complete checkpoint (the one `latest.json` names): older
  ones are deleted as each new one is published (`prune`);
* once training succeeded and the model is logged, nothing (`drop`);
* an interrupted run's newest checkpoint stays until a run resumes it (`adopt`: copied into
  the new run's prefix, then dropped) or `genpipe gc` removes it.

A run whose training finished (its model is logged) but a later task failed (evaluate,
register) has no checkpoint: a run resuming it takes its logged model instead of training
(`adopt_model`).
"""

from __future__ import annotations

from typing import Any

from zoo.errors import ConfigError
from zoo.names import (
    PARAM_SOURCE,
    TAG_FINGERPRINT,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_RESUMED_BY,
    TAG_RESUMED_FROM,
)
from zoo.storage import ObjectStore

LATEST = "latest.json"


def model_prefix(mlflow_run_id: str) -> str:
    """Where the chief of a TFJob uploads the trained model directory (under the bucket)."""
    return f"models/{mlflow_run_id}/model"


def prefix_uri(store: ObjectStore, mlflow_run_id: str) -> str:
    """Where one training run's checkpoints live: keyed by the MLflow run, so a retried task
    (single pod or a TFJob's workers) finds and resumes them."""
    return store.uri(f"checkpoints/{mlflow_run_id}")


def prune(store: ObjectStore, uri: str, keep: str) -> int:
    """Delete every checkpoint under `uri` but `keep` (the folder `latest.json` names, so call
    this after publishing the pointer); returns the number of objects deleted."""
    base = uri.rstrip("/") + "/"
    old = []
    for obj in store.list(base):
        rel = obj[len(base) :]
        if rel != LATEST and rel.split("/", 1)[0] != keep:
            old.append(obj)
    return store.delete_many(old)  # one request, not one per object


def drop(store: ObjectStore, mlflow_run_id: str) -> int:
    """Delete all of a run's checkpoints (its training is done); returns the objects deleted."""
    # The trailing slash: run "abc" must not take run "abcd"'s checkpoints with it.
    return store.delete_prefix(prefix_uri(store, mlflow_run_id) + "/")


def resume_point(store: ObjectStore, mlflow_run_id: str) -> dict[str, Any] | None:
    """The run's newest published checkpoint (`latest.json`: prefix, files, step, epoch)."""
    latest = f"{prefix_uri(store, mlflow_run_id)}/{LATEST}"
    return store.get_json(latest) if store.exists(latest) else None


def _get_run(client: Any, run_id: str, what: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise ConfigError(
            f"{what} {run_id!r}: no such MLflow run ({e.error_code}); valid: the run id "
            "`genpipe run` printed, or one `genpipe gc` lists as resumable"
        ) from None


def check_resume(
    client: Any,
    store: ObjectStore,
    run_id: str,
    model: str,
    source: str,
    params: dict[str, str],
    what: str = "--resume",
) -> dict[str, Any]:
    """Check that `run_id` can be resumed by a run of `model` on `source` with the config
    `params` (as MLflow params: strings); returns its resume point plus `run_id`, `status`,
    or, when its training finished (a later task failed), `run_id`, `status` and the logged
    model's `model_uri` (`adopt_model`: the resuming run evaluates that model).

    Raises ConfigError naming the difference: another model, data source or config, a run
    already resumed, or a run without a checkpoint.
    """
    run = _get_run(client, run_id, what)
    tags, old = run.data.tags, run.data.params
    if tags.get(TAG_RESUMED_BY):
        by = tags[TAG_RESUMED_BY]
        raise ConfigError(f"{what} {run_id}: already resumed by run {by}; valid: --resume {by}")
    if tags.get(TAG_MODEL) != model:
        raise ConfigError(
            f"{what} {run_id}: that run trained {tags.get(TAG_MODEL)!r}, not {model!r}"
        )
    if old.get(PARAM_SOURCE, source) != source:
        raise ConfigError(
            f"{what} {run_id}: that run trained on --data {old[PARAM_SOURCE]}, this one on "
            f"{source}; valid: the same data"
        )
    differ = {k: (v, old[k]) for k, v in params.items() if k in old and old[k] != v}
    if differ:
        said = ", ".join(f"{k}={v} (run has {o})" for k, (v, o) in sorted(differ.items()))
        raise ConfigError(f"{what} {run_id}: config differs: {said}; valid: the same config")
    if tags.get(TAG_MODEL_URI):  # trained: a later task failed; its model is evaluated
        _unfinished(run, what)
        return {"run_id": run_id, "status": run.info.status, "model_uri": tags[TAG_MODEL_URI]}
    latest = resume_point(store, run_id)
    if latest is None:
        status = run.info.status
        why = (
            "its training completed (checkpoints are dropped then)"
            if status == "FINISHED" or "train_wall_s" in run.data.metrics
            else "it stopped before its first checkpoint"
        )
        raise ConfigError(f"{what} {run_id}: nothing to resume, {why} (run {status})")
    return {**latest, "run_id": run_id, "status": run.info.status}


def adopt(
    client: Any, store: ObjectStore, from_run: str, to_run: str, fingerprint: str
) -> dict[str, Any] | None:
    """Start `to_run` from `from_run`'s newest checkpoint: copy it into `to_run`'s prefix
    (pointer last), tag both runs, end `from_run` KILLED if it still claims to run, and drop
    its checkpoints. Returns the adopted `latest.json`, or None when `to_run` already has a
    checkpoint of its own (a retried task: its own progress wins).

    Raises ConfigError when `from_run` has no checkpoint or trained on other data.
    """
    if resume_point(store, to_run) is not None:
        return None
    run = _same_data(client, from_run, fingerprint)
    latest = resume_point(store, from_run)
    if latest is None:
        raise ConfigError(f"resume_from {from_run}: that run has no checkpoint to resume")
    src, dest = prefix_uri(store, from_run), prefix_uri(store, to_run)
    for f in latest["files"]:
        store.copy(f"{src}/{latest['prefix']}/{f}", f"{dest}/{latest['prefix']}/{f}")
    adopted = {**latest, "adopted_from": from_run}
    store.put_json(f"{dest}/{LATEST}", adopted)  # pointer last, as Checkpointer.save does
    _link(client, run, to_run, f"{from_run} step {latest['step']}")
    drop(store, from_run)
    return adopted


def adopt_model(client: Any, from_run: str, to_run: str, fingerprint: str) -> str | None:
    """The logged model (its models:/ URI) of `from_run` when that run's training finished
    and a later task failed (evaluate, register): `to_run` evaluates and registers it instead
    of training again. Tags both runs as `adopt` does (idempotent: a retried task adopts it
    again) and ends `from_run` KILLED if it still claims to run. None when `from_run` logged
    no model (its checkpoint is resumed: `adopt`).

    Raises ConfigError when `from_run` does not exist or trained on other data.
    """
    run = _get_run(client, from_run, "resume_from")
    uri = run.data.tags.get(TAG_MODEL_URI)
    if not uri:
        return None
    _unfinished(run, "resume_from")
    _same_data(client, from_run, fingerprint, run)
    _link(client, run, to_run, f"{from_run} trained model")
    return str(uri)


def _link(client: Any, run: Any, to_run: str, resumed_from: str) -> None:
    """Tag `to_run` as resuming `run` (`resumed_from` says from what) and `run` as resumed by
    it; end `run` KILLED if it still claims to run (its process died without saying so)."""
    from_run = run.info.run_id
    client.set_tag(to_run, TAG_RESUMED_FROM, resumed_from)
    client.set_tag(from_run, TAG_RESUMED_BY, to_run)
    if run.info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(from_run, "KILLED")


def _unfinished(run: Any, what: str) -> None:
    """A ConfigError when `run` (with a logged model) ended FINISHED: evaluated, and
    registered when blessed; resuming it would only register its model again."""
    if run.info.status == "FINISHED":
        raise ConfigError(
            f"{what} {run.info.run_id}: nothing to resume, the run finished (FINISHED): its "
            "model was evaluated (and registered if blessed); valid: a run that failed or was "
            "interrupted"
        )


def _same_data(client: Any, from_run: str, fingerprint: str, run: Any = None) -> Any:
    """Run `from_run` (as read, or `run`) if it trained on dataset `fingerprint`, else a
    ConfigError."""
    run = run if run is not None else _get_run(client, from_run, "resume_from")
    old_fp = run.data.tags.get(TAG_FINGERPRINT, "")
    if old_fp != fingerprint:
        raise ConfigError(
            f"resume_from {from_run}: that run trained on dataset {old_fp[:12] or '?'}, this "
            f"one on {fingerprint[:12]} (the data behind the source changed, or --test-fraction); "
            "valid: the same data and split"
        )
    return run
