"""RunLogger: metrics, params, tags, images and files into one MLflow run, in few requests."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from zoo import grids as imgs
from zoo.errors import GenpipeError

#: MLflow's limits on one log_batch request (mlflow/utils/validation.py)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100


class RunLogger:
    """Logs metrics, params, images and files into one MLflow run without a global active run.

    Metrics, params and tags go in `log_batch` calls (one request per call of ours, not one
    per value: each is a round trip of 40-100 ms on a loaded machine); the run's params are
    read once per logger, as only this task writes them meanwhile.
    """

    def __init__(self, c: MlflowClient, run_id: str) -> None:
        self.client = c
        self.run_id = run_id
        self._params: dict[str, str] | None = None  # the run's params, read on first use

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)  # what log_metric stamps each value with
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])

    def params(self, values: dict[str, Any], prefix: str = "") -> None:
        flat = _flatten(values, prefix)
        if self._params is None:
            self._params = dict(self.client.get_run(self.run_id).data.params)
        existing = self._params
        # MLflow params are immutable; a retried component re-logs the same values, skip those.
        new = {k: v for k, v in flat.items() if k not in existing}
        changed = {k: v for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            raise GenpipeError(
                f"MLflow run {self.run_id} already has different values for {sorted(changed)}; "
                "a pipeline run cannot change its configuration on retry"
            )
        batch = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(batch), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch[i : i + MAX_PARAMS_PER_BATCH])
        existing.update(new)

    def tags(self, values: dict[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in values.items()]
        for i in range(0, len(batch), MAX_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch[i : i + MAX_TAGS_PER_BATCH])

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
