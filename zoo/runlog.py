"""RunLogger: metrics, params, tags, images and files into one MLflow run, in few requests."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from zoo import grids as imgs
from zoo.errors import GenpipeError
from zoo.mlflow_calls import log_artifact_at

#: MLflow's limits on one log_batch request (mlflow/utils/validation.py)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000  # all three together


class RunLogger:
    """Logs metrics, params, images and files into one MLflow run without a global active run.

    Metrics, params and tags go in `log_batch` calls (one request per call of ours, not one
    per value: each is a round trip of 40-100 ms on a loaded machine); the run's params are
    read once per logger, as only this task writes them meanwhile.

    `background=True`: each call prepares its request (params checked against the run's,
    images encoded) and returns; the requests go out in order from one thread, so a trainer
    does not wait on them. `flush()` waits for them and raises the first failure (as does the
    next call after one); `close()` waits without raising (an earlier error is on its way).
    """

    def __init__(
        self,
        c: MlflowClient,
        run_id: str,
        params: dict[str, str] | None = None,
        artifact_uri: str | None = None,
        background: bool = False,
    ) -> None:
        """`params`: the run's params when the caller already has them (a run it just read or
        created), else they are read on first use. `artifact_uri`: the run's (run.info
        .artifact_uri), when the caller has it: files then upload without MLflow reading the
        run first (zoo.mlflow_calls.log_artifact_at)."""
        self.client = c
        self.run_id = run_id
        self._params: dict[str, str] | None = None if params is None else dict(params)
        self._artifact_uri = artifact_uri
        self._lock = threading.Lock()  # the params cache: callers in several threads
        self._sender = (
            ThreadPoolExecutor(1, thread_name_prefix="genpipe-runlog") if background else None
        )
        self._sent: list[Future[Any]] = []

    def _send(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._sender is None:
            fn(*args)
            return
        failed = next((f for f in self._sent if f.done() and f.exception() is not None), None)
        if failed is not None:
            self.flush()  # raises the first failure
        self._sent = [f for f in self._sent if not f.done()]
        self._sent.append(self._sender.submit(fn, *args))

    def flush(self) -> None:
        """Wait for the requests sent in the background; raise the first that failed."""
        sent, self._sent = self._sent, []
        errors = [e for e in (f.exception() for f in sent) if e is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Wait for the background requests, without raising (see `flush`); stop the thread."""
        if self._sender is not None:
            self._sender.shutdown(wait=True)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self.log(metrics=values, step=step)

    def params(self, values: dict[str, Any], prefix: str = "") -> None:
        self.log(params=_flatten(values, prefix))

    def tags(self, values: dict[str, str]) -> None:
        self.log(tags=values)

    def log(
        self,
        metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        step: int | None = None,
    ) -> None:
        """Metrics, (flat) params and tags together, in as few log_batch requests as MLflow's
        limits allow (one, for a task's usual few dozen values)."""
        now = int(time.time() * 1000)  # what log_metric stamps each value with
        m = [Metric(k, float(v), now, step or 0) for k, v in (metrics or {}).items()]
        p = [Param(k, v) for k, v in self._new_params(params or {}).items()]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while m or p or t:
            pc, tc = p[:MAX_PARAMS_PER_BATCH], t[:MAX_TAGS_PER_BATCH]
            mc = m[: min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(pc) - len(tc))]
            self._send(self._batch, mc, pc, tc)
            m, p, t = m[len(mc) :], p[len(pc) :], t[len(tc) :]

    def _batch(self, m: list[Metric], p: list[Param], t: list[RunTag]) -> None:
        self.client.log_batch(self.run_id, metrics=m, params=p, tags=t)

    def _new_params(self, flat: dict[str, Any]) -> dict[str, str]:
        """The params the run lacks: MLflow params are immutable, and a retried component
        re-logs the same values (skipped); a different value is an error."""
        if not flat:
            return {}
        flat = {k: str(v) for k, v in flat.items()}
        with self._lock:
            if self._params is None:
                self._params = dict(self.client.get_run(self.run_id).data.params)
            existing = self._params
            changed = {k: v for k, v in flat.items() if k in existing and existing[k] != v}
            if changed:
                raise GenpipeError(
                    f"MLflow run {self.run_id} already has different values for "
                    f"{sorted(changed)}; a pipeline run cannot change its configuration on retry"
                )
            new = {k: v for k, v in flat.items() if k not in existing}
            existing.update(new)
        return new

    def image(self, images: np.ndarray, artifact_file: str, cols: int | None = None) -> None:
        """Log [N, H, W, C] float images in [0, 1] as one PNG grid."""
        self.bytes(imgs.grid_png(images, cols=cols), artifact_file)

    def bytes(self, data: bytes, artifact_file: str) -> None:
        self._send(self._upload, data, artifact_file)

    def _upload(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            where = None if parent == "." else parent
            if self._artifact_uri:
                log_artifact_at(self._artifact_uri, str(path), where, self.client.tracking_uri)
            else:
                self.client.log_artifact(self.run_id, str(path), where)

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
