"""The TFJob worker entry point: `python -m zoo.distributed worker ...`.

Multi-node training is split in three:

* `zoo.tfconfig` (library): TF_CONFIG parsing, who is chief; the trainer uses it.
* `genpipe.ops.tfjob` (operations): render the run's TFJob from the template compiled into the
  pipeline (`pipelines.platform.tfjob_template`, from the cluster profile), create it, wait,
  stream worker 0's log. The train component calls it when the pipeline was compiled with
  `workers` >= 2.
* this module: what each worker pod runs. Every worker trains under
  MultiWorkerMirroredStrategy (the Training Operator writes each pod's TF_CONFIG); worker 0,
  the chief, logs to MLflow, publishes checkpoints and uploads the trained model directory to
  `s3://<bucket>/models/<mlflow_run_id>/model`, which the launcher then logs as the run's model.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from zoo.errors import ConfigError


def run_worker(
    model: str,
    manifest_uri: str,
    mlflow_run_id: str,
    preset: str = "default",
    overrides: str = "{}",
) -> None:
    """One TFJob worker: train under MultiWorkerMirroredStrategy; the chief logs and uploads.

    Every worker restores from and saves checkpoints (MultiWorkerMirroredStrategy needs all
    of them to take part); only the chief publishes to the object store and logs to MLflow.
    """
    from zoo import models, tracking
    from zoo.checkpoints import model_prefix
    from zoo.config import json_object
    from zoo.data import fetch
    from zoo.storage import ObjectStore
    from zoo.tfconfig import cluster_info
    from zoo.train import train_for_run

    parsed = json_object(overrides, "--overrides")
    cfg = models.resolve_config(model, preset, parsed, where="overrides")
    if cfg.distribution not in ("multi_worker", "auto"):
        raise ConfigError(
            f"a TFJob worker needs distribution multi_worker or auto, not {cfg.distribution!r}"
        )
    info = cluster_info()
    store = ObjectStore.from_env()
    logger = tracking.RunLogger(tracking.client(), mlflow_run_id) if info.is_chief else None
    # Everything local goes under the temp dir: the workers' root filesystem is read-only and
    # /tmp is their emptyDir.
    with tempfile.TemporaryDirectory(prefix="genpipe-worker-") as work:
        data = fetch(manifest_uri, store, Path(work) / "data")
        result = train_for_run(model, cfg, data, Path(work) / "train", store, mlflow_run_id, logger)
        if info.is_chief:
            store.upload_dir(result.model_dir, store.uri(model_prefix(mlflow_run_id)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.distributed")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run one multi-worker training process (uses TF_CONFIG)")
    w.add_argument("--model", required=True)
    w.add_argument("--manifest-uri", required=True)
    w.add_argument("--mlflow-run-id", required=True)
    w.add_argument("--preset", default="default")
    w.add_argument("--overrides", default="{}")
    args = parser.parse_args(argv)
    run_worker(args.model, args.manifest_uri, args.mlflow_run_id, args.preset, args.overrides)


if __name__ == "__main__":
    main()
