"""TF_CONFIG: who this process is in a multi-worker TensorFlow cluster (library, no cluster calls).

TensorFlow's MultiWorkerMirroredStrategy reads the cluster from the TF_CONFIG environment
variable; the Kubeflow Training Operator writes it into each TFJob worker pod, and tests write
it for worker processes on 127.0.0.1. The trainer (zoo.train) asks `cluster_info()` whether it
is the chief.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zoo import ports
from zoo.errors import ConfigError


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 for local workers (`zoo.ports` picks them)."""
    return ports.free_ports(n)


def make_tf_config(workers: Sequence[str], index: int, task_type: str = "worker") -> str:
    """The TF_CONFIG JSON for task `index` of a cluster of `workers` ("host:port" each)."""
    if not workers:
        raise ConfigError("TF_CONFIG needs at least one worker address, e.g. ['127.0.0.1:2222']")
    for w in workers:
        host, _, port = w.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"worker address {w!r} is not host:port, e.g. 'worker-0:2222'")
    if not 0 <= index < len(workers):
        raise ConfigError(f"task index {index} is out of range for {len(workers)} worker(s)")
    return json.dumps(
        {"cluster": {"worker": list(workers)}, "task": {"type": task_type, "index": index}}
    )


@dataclass(frozen=True)
class ClusterInfo:
    """Who this process is in a TF_CONFIG cluster."""

    num_workers: int
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        """The chief logs, publishes checkpoints and saves the model (worker 0 without a chief)."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0)


def cluster_info(environ: Mapping[str, str] | None = None) -> ClusterInfo:
    """Parse TF_CONFIG; no TF_CONFIG means a one-process cluster whose only task is chief."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "") or "{}"
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not JSON ({e.msg}): {raw[:200]!r}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"TF_CONFIG is not a JSON object: {raw[:200]!r}")
    cluster = cfg.get("cluster") or {}
    n = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    task = cfg.get("task") or {}
    try:
        index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise ConfigError(
            f"TF_CONFIG task.index {task.get('index')!r} is not an integer: {raw[:200]!r}"
        ) from None
    return ClusterInfo(max(n, 1), str(task.get("type", "worker")), index)
