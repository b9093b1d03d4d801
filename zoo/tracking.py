"""MLflow tracking helpers: one MLflow run per pipeline run, found again on retries.

Every component of one pipeline run logs into the same MLflow run, found by the tag
`genpipe.pipeline_run_id`, so a retried component (KFP re-runs it from scratch) appends to
that run instead of creating a duplicate.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from zoo import images as imgs
from zoo.errors import GenpipeError
from zoo.settings import Settings

TAG_PIPELINE_RUN = "genpipe.pipeline_run_id"
TAG_MODEL = "genpipe.model"
TAG_DATASET = "genpipe.dataset_fingerprint"
TAG_GIT = "genpipe.git_commit"
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"


def client(settings: Settings | None = None) -> MlflowClient:
    """An MLflow client for the configured tracking server (sets the global URI too)."""
    settings = settings or Settings.from_env()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    return MlflowClient(settings.mlflow_uri)


def git_commit() -> str:
    """The commit this code was built from: GENPIPE_GIT_COMMIT (set in images), else git, else 'unknown'."""
    if os.environ.get("GENPIPE_GIT_COMMIT"):
        return os.environ["GENPIPE_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def get_or_create_run(
    c: MlflowClient,
    experiment: str,
    pipeline_run_id: str,
    model_name: str,
    run_name: str | None = None,
) -> str:
    """The MLflow run id for this pipeline run: found by tag, or created once."""
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else _create_experiment(c, experiment)
    found = c.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = c.create_run(
        exp_id,
        run_name=run_name or f"{model_name}-{pipeline_run_id[-8:]}",
        tags={TAG_PIPELINE_RUN: pipeline_run_id, TAG_MODEL: model_name, TAG_GIT: git_commit()},
    )
    return run.info.run_id


def _create_experiment(c: MlflowClient, name: str) -> str:
    try:
        return c.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        # Another component created it between our lookup and create.
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class RunLogger:
    """Logs metrics, params, images and files into one MLflow run without a global active run."""

    def __init__(self, c: MlflowClient, run_id: str) -> None:
        self.client = c
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        for k, v in values.items():
            self.client.log_metric(self.run_id, k, float(v), step=step or 0)

    def params(self, values: dict[str, Any], prefix: str = "") -> None:
        flat = _flatten(values, prefix)
        existing = self.client.get_run(self.run_id).data.params
        # MLflow params are immutable; a retried component re-logs the same values, skip those.
        new = {k: v for k, v in flat.items() if k not in existing}
        changed = {k: v for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            raise GenpipeError(
                f"MLflow run {self.run_id} already has different values for {sorted(changed)}; "
                "a pipeline run cannot change its configuration on retry"
            )
        for k, v in new.items():
            self.client.log_param(self.run_id, k, v)

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.client.set_tag(self.run_id, k, v)

    def image(self, images: np.ndarray, artifact_file: str, cols: int | None = None) -> None:
        """Log [N, H, W, C] float images in [0, 1] as one PNG grid."""
        self.bytes(imgs.grid_png(images, cols=cols), artifact_file)

    def bytes(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def text(self, text: str, artifact_file: str) -> None:
        self.bytes(text.encode(), artifact_file)

    def json(self, obj: Any, artifact_file: str) -> None:
        self.text(json.dumps(obj, indent=2, sort_keys=True), artifact_file)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def run_url(settings: Settings, run_id: str, experiment_id: str) -> str:
    return f"{settings.mlflow_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
