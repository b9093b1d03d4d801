"""Train: run the model's training loop, publish checkpoints, log and output the model."""

# No `from __future__ import annotations` here: KFP reads the component signature's real types.
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kfp.dsl import Dataset, Input, Model, Output


def run(
    manifest_uri: str,
    mlflow_run_id: str,
    output_dir: str,
    tfjob: str = "",
    resume_from: str = "",
    mlflow_run: Any = None,
) -> dict[str, Any]:
    """Train the run's model on the dataset behind `manifest_uri`; it lands in `output_dir`.

    The model and its resolved config (the profile's train_defaults under the run's own
    overrides) are what ingest checked and recorded on the MLflow run (components.common
    `recorded_run`). `tfjob` (compiled in from a profile with workers >= 2) is a TFJob
    template: this task then launches the workers and waits.

    Checkpoints go to s3://<bucket>/checkpoints/<mlflow_run_id>/, so a retried task (same
    pipeline run, same MLflow run) resumes instead of starting over; they are dropped once
    the model is logged. `resume_from` (an interrupted run's MLflow run id, `genpipe run
    --resume`) starts this run from that run's newest checkpoint (zoo.checkpoints.adopt), or,
    when that run's training had finished (its model is logged; evaluate or register
    failed), trains nothing: its model is this run's (zoo.checkpoints.adopt_model).
    `mlflow_run`: the MLflow run when the caller already read it (saves a round trip).
    """
    from components.common import fetch_dataset, recorded_run
    from zoo import checkpoints, names, timeline, tracking
    from zoo.registration import log_model
    from zoo.storage import ObjectStore
    from zoo.train import train_for_run

    timeline.mark("train: start")
    c = tracking.client()
    rec = recorded_run(c, mlflow_run_id, mlflow_run)
    model, cfg = rec.model, rec.config
    if resume_from:
        trained = _resume(c, resume_from, mlflow_run_id, manifest_uri, output_dir)
        if trained is not None:  # its training had finished: nothing to train
            return {**trained, "model": model}
    if tfjob:
        # Multi-node: the workers run in a Kubeflow TFJob; this task launches and waits.
        out = _run_tfjob(
            tfjob, model, manifest_uri, mlflow_run_id, output_dir, rec.preset, rec.overrides
        )
        return {**out, "model": model}
    store = ObjectStore.from_env()
    data = fetch_dataset(manifest_uri)
    # The run as read: its params and artifact location need no second read (the epochs'
    # sample images upload without MlflowClient.log_artifact's read of the run).
    params = mlflow_run.data.params if mlflow_run is not None else None
    artifact_uri = mlflow_run.info.artifact_uri if mlflow_run is not None else None
    # In the background: the params, each epoch's metrics and sample, the totals go out while
    # the trainer goes on (it waited ~0.02-0.06 s on each); all have landed (`flush`, which
    # raises a failed one) before log_model reads the run for its step-0 metrics.
    logger = tracking.RunLogger(
        c, mlflow_run_id, params=params, artifact_uri=artifact_uri, background=True
    )
    try:
        logger.params({names.PARAM_PRESET: rec.preset})
        # The pid in the name: `genpipe gc` removes the dir of a task that was killed (SIGKILL
        # leaves no chance to clean up) and leaves a live task's alone.
        with tempfile.TemporaryDirectory(prefix=f"genpipe-train-{os.getpid()}-") as work:
            timeline.mark("train: trainer starts")
            result = train_for_run(model, cfg, data, Path(work), store, mlflow_run_id, logger)
            timeline.mark("train: trainer done")
            out = Path(output_dir)
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(result.model_dir, out)
        logger.flush()
        timeline.mark("train: logs flushed")
    finally:
        logger.close()  # after an error: what was sent still lands (the error is raised)
    # MLflow's fluent API, not the bounded client: retried through outages here.
    model_uri = tracking.retrying("log_model", log_model, c, mlflow_run_id, out)
    timeline.mark("train: model logged")
    checkpoints.drop(store, mlflow_run_id)  # the model is logged: nothing left to resume
    return {
        "model": model,
        "model_uri": model_uri,
        "wall_s": result.wall_s,
        "samples_per_s": result.samples_per_s,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "metrics": result.metrics,
    }


def _resume(
    c: Any, from_run: str, mlflow_run_id: str, manifest_uri: str, output_dir: str
) -> dict[str, Any] | None:
    """Start this run from `from_run`: its logged model when its training finished (the
    model lands in `output_dir`, its train_* metrics and model URI on this run; returns
    train's result), else its newest checkpoint (a no-op on a retry that has its own; None)."""
    import mlflow

    from zoo import checkpoints, names, tracking
    from zoo.storage import ObjectStore

    store = ObjectStore.from_env()
    fingerprint = store.get_json(manifest_uri)["fingerprint"]
    model_uri = checkpoints.adopt_model(c, from_run, mlflow_run_id, fingerprint)
    if model_uri is None:
        adopted = checkpoints.adopt(c, store, from_run, mlflow_run_id, fingerprint)
        if adopted:
            print(f"resuming from step {adopted['step']} of run {from_run}", flush=True)
        return None
    print(
        f"training skipped: run {from_run} finished training (model {model_uri}); "
        "evaluating that model",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix=f"genpipe-train-{os.getpid()}-") as tmp:
        local = tracking.retrying(
            "download the trained model",
            mlflow.artifacts.download_artifacts,
            artifact_uri=model_uri,
            dst_path=tmp,
        )
        found = [p.parent for p in Path(local).rglob("model.keras")]
        if not found:
            from zoo.errors import GenpipeError

            raise GenpipeError(f"run {from_run}'s model {model_uri} has no model.keras")
        out = Path(output_dir)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(found[0], out)
    metrics = {k: v for k, v in c.get_run(from_run).data.metrics.items() if k.startswith("train_")}
    tracking.RunLogger(c, mlflow_run_id).log(metrics=metrics, tags={names.TAG_MODEL_URI: model_uri})
    return {
        "model_uri": model_uri,
        "wall_s": metrics.get("train_wall_s", 0.0),
        "samples_per_s": metrics.get("train_samples_per_s_overall", 0.0),
        "steps": 0,
        "resumed_from_step": 0,
        "metrics": metrics,
    }


def _run_tfjob(
    template: str,
    model: str,
    manifest_uri: str,
    mlflow_run_id: str,
    output_dir: str,
    preset: str,
    merged: dict[str, Any],
    **kube: Any,
) -> dict[str, Any]:
    """Train in a TFJob (genpipe.ops.tfjob), then log the model its chief uploaded.

    `kube` goes to genpipe.ops.tfjob.launch (Kubernetes API clients; tests pass stand-ins).
    """
    import time

    from genpipe.ops import tfjob
    from zoo import checkpoints, models, tracking
    from zoo.errors import ConfigError
    from zoo.registration import log_model
    from zoo.storage import ObjectStore

    spec = tfjob.parse_template(template)
    distribution = models.resolve_config(model, preset, merged, where="overrides").distribution
    if distribution not in ("auto", "multi_worker"):
        workers = spec["spec"]["tfReplicaSpecs"]["Worker"]["replicas"]
        raise ConfigError(
            f"overrides distribution={distribution!r}: this pipeline trains on {workers} TFJob "
            "workers, which needs multi_worker (or auto); compile with workers: 1 instead"
        )
    # The workers' TF_CONFIG names them all: multi_worker, stated rather than detected.
    merged = {**merged, "distribution": "multi_worker"}
    models.resolve_config(model, preset, merged, where="overrides")
    t0 = time.perf_counter()
    tfjob.launch(
        spec, model, manifest_uri, mlflow_run_id, preset, json.dumps(merged, sort_keys=True), **kube
    )
    store = ObjectStore.from_env()
    model_uri = store.uri(checkpoints.model_prefix(mlflow_run_id))
    out = Path(output_dir)
    shutil.rmtree(out, ignore_errors=True)
    store.download_prefix(model_uri, out)
    c = tracking.client()
    metrics = dict(c.get_run(mlflow_run_id).data.metrics)
    logged_uri = tracking.retrying("log_model", log_model, c, mlflow_run_id, out)
    checkpoints.drop(store, mlflow_run_id)  # the model is logged: nothing left to resume
    return {
        "model_uri": logged_uri,
        "wall_s": metrics.get("train_wall_s", time.perf_counter() - t0),
        "samples_per_s": metrics.get("train_samples_per_s_overall", 0.0),
        "steps": 0,  # counted by the workers; see the MLflow run
        "resumed_from_step": 0,
        "metrics": {k: v for k, v in metrics.items() if k.startswith("train_")},
    }


def train(
    mlflow_run_id: str,
    dataset: Input[Dataset],
    trained_model: Output[Model],
    tfjob: str = "",
    resume_from: str = "",
) -> None:
    """KFP interface of train (imports inside: KFP runs this function's source alone).

    Outputs the trained model directory for evaluate; its MLflow model URI and timings are
    on the MLflow run (tag genpipe.model_uri, metrics train_*).
    """
    from components.common import read_dataset_artifact
    from components.train import run
    from zoo import tracking

    ds = read_dataset_artifact(dataset.path)
    # a diverged or killed training ends the run
    with tracking.run_status(mlflow_run_id) as status:
        out = run(
            ds["manifest_uri"],
            mlflow_run_id,
            trained_model.path,
            tfjob,
            resume_from,
            mlflow_run=status.run,
        )
    trained_model.metadata.update(
        {
            "model": out["model"],
            "mlflow_model_uri": out["model_uri"],
            "fingerprint": ds["fingerprint"],
            "steps": out["steps"],
        }
    )
