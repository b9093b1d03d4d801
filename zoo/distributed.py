"""Multi-node training: TF_CONFIG helpers, Kubeflow TFJob manifests, launching and waiting.

The trainer (zoo.train) picks MultiWorkerMirroredStrategy when `distribution` is
"multi_worker" (or "auto" with a TF_CONFIG naming more than one worker). On a cluster the
train component does not train itself then: it submits a Kubeflow Training Operator TFJob
whose N worker pods each run `python -m zoo.distributed worker ...` (the operator writes each
pod's TF_CONFIG), waits for the job, streams worker 0's log and raises with the job's own
failure message. Worker 0 (the chief) logs to MLflow, publishes checkpoints and uploads the
trained model directory to `s3://<bucket>/models/<mlflow_run_id>/`, which the component then
registers as if it had trained in-process.

What is tested for real here: TF_CONFIG, two MultiWorkerMirroredStrategy workers on
127.0.0.1 running the trainer, and the generated manifests (PodTemplateSpecs validated
against the Kubernetes schema, TFJob fields structurally). What is on paper only (no
Kubernetes API server on the development machine): `submit_tfjob`, `wait_tfjob` and
`stream_logs` against a live cluster with the Training Operator installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, GenpipeError

TFJOB_GROUP = "kubeflow.org"
TFJOB_VERSION = "v1"
TFJOB_PLURAL = "tfjobs"
TFJOB_KIND = "TFJob"
# The Training Operator finds the TensorFlow container by this name (and sets TF_CONFIG in it).
TF_CONTAINER = "tensorflow"
TF_PORT = 2222
# Labels the Training Operator puts on the pods of a job.
LABEL_JOB_NAME = "training.kubeflow.org/job-name"
LABEL_REPLICA_TYPE = "training.kubeflow.org/replica-type"
LABEL_REPLICA_INDEX = "training.kubeflow.org/replica-index"

# Environment of the train component that switches it to launching a TFJob.
ENV_WORKERS = "GENPIPE_TFJOB_WORKERS"
ENV_IMAGE = "GENPIPE_TFJOB_IMAGE"
ENV_NAMESPACE = "GENPIPE_TFJOB_NAMESPACE"
ENV_GPUS = "GENPIPE_TFJOB_GPUS_PER_WORKER"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --- TF_CONFIG ----------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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


def cluster_info(environ: dict[str, str] | None = None) -> ClusterInfo:
    """Parse TF_CONFIG; no TF_CONFIG means a one-process cluster whose only task is chief."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "") or "{}"
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not JSON ({e.msg}): {raw[:200]!r}") from None
    cluster = cfg.get("cluster", {})
    n = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    task = cfg.get("task", {})
    return ClusterInfo(max(n, 1), str(task.get("type", "worker")), int(task.get("index", 0)))


# --- manifests ----------------------------------------------------------------------------------


@dataclass
class TFJobSpec:
    """What a TFJob for one training run needs; `tfjob_manifest` turns it into the object."""

    name: str
    image: str
    command: list[str]
    workers: int = 2
    namespace: str = "kubeflow"
    gpus_per_worker: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "2"
    cpu_limit: str = "4"
    memory_request: str = "4Gi"
    memory_limit: str = "8Gi"
    env: dict[str, str] = field(default_factory=dict)
    # Secrets / ConfigMaps whose keys become environment variables (key names = variable names,
    # as in pipelines.platform): credentials stay references, never values in the manifest.
    secret_env: list[tuple[str, bool]] = field(default_factory=list)  # (name, optional)
    config_map_env: list[tuple[str, bool]] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    backoff_limit: int = 2
    image_pull_policy: str = "IfNotPresent"

    def validate(self) -> None:
        if len(self.name) > 63 or not _DNS1123.match(self.name):
            raise ConfigError(
                f"TFJob name {self.name!r} must be a DNS-1123 label: lowercase letters, digits "
                "and '-', at most 63 characters, starting and ending alphanumeric"
            )
        if not _DNS1123.match(self.namespace):
            raise ConfigError(f"namespace {self.namespace!r} is not a DNS-1123 label")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} must be >= 1")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"gpus_per_worker={self.gpus_per_worker} must be >= 0")
        if not self.image or ":" not in self.image.rsplit("/", 1)[-1]:
            raise ConfigError(f"image {self.image!r} must carry a pinned tag")
        if not self.command:
            raise ConfigError("command must not be empty")


def pod_template(spec: TFJobSpec) -> dict[str, Any]:
    """The worker PodTemplateSpec (core/v1) of a TFJob."""
    limits: dict[str, Any] = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    if spec.gpus_per_worker:
        limits[spec.gpu_resource] = spec.gpus_per_worker
    env_from = [
        {"secretRef": {"name": name, "optional": optional}} for name, optional in spec.secret_env
    ] + [
        {"configMapRef": {"name": name, "optional": optional}}
        for name, optional in spec.config_map_env
    ]
    container: dict[str, Any] = {
        "name": TF_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": list(spec.command),
        "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())],
        "ports": [{"name": "tfjob-port", "containerPort": TF_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
            "limits": limits,
        },
    }
    if env_from:
        container["envFrom"] = env_from
    pod: dict[str, Any] = {"containers": [container], "restartPolicy": "OnFailure"}
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [
            {("tolerationSeconds" if k == "toleration_seconds" else k): v for k, v in t.items()}
            for t in spec.tolerations
        ]
    return {"metadata": {"labels": {"app": "genpipe", **spec.labels}}, "spec": pod}


def tfjob_manifest(spec: TFJobSpec) -> dict[str, Any]:
    """A kubeflow.org/v1 TFJob with `spec.workers` identical Worker replicas.

    Worker 0 acts as chief (TensorFlow's rule when the cluster has no "chief" task), so the
    job succeeds when worker 0 succeeds (successPolicy "" = default).
    """
    spec.validate()
    return {
        "apiVersion": f"{TFJOB_GROUP}/{TFJOB_VERSION}",
        "kind": TFJOB_KIND,
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app": "genpipe", **spec.labels},
        },
        "spec": {
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": spec.backoff_limit},
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": spec.workers,
                    "restartPolicy": "OnFailure",
                    "template": pod_template(spec),
                }
            },
        },
    }


def job_name(mlflow_run_id: str, prefix: str = "genpipe-train") -> str:
    """A DNS-1123 TFJob name derived from the MLflow run id (stable across component retries)."""
    return f"{prefix}-{re.sub(r'[^a-z0-9]', '', mlflow_run_id.lower())[:40]}".rstrip("-")


def worker_command(
    model: str, manifest_uri: str, mlflow_run_id: str, preset: str, overrides: str
) -> list[str]:
    """The command every worker pod runs."""
    return [
        "python",
        "-m",
        "zoo.distributed",
        "worker",
        "--model",
        model,
        "--manifest-uri",
        manifest_uri,
        "--mlflow-run-id",
        mlflow_run_id,
        "--preset",
        preset,
        "--overrides",
        overrides,
    ]


# --- job state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    """A TFJob's outcome so far: phase is Created/Running/Restarting/Succeeded/Failed/Pending."""

    phase: str
    message: str

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def job_state(obj: dict[str, Any]) -> JobState:
    """Read the phase from a TFJob's status conditions (the last True condition wins).

    The Training Operator appends conditions (Created, Running, Restarting, Succeeded,
    Failed) with status "True" for the current one.
    """
    conditions = (obj.get("status") or {}).get("conditions") or []
    current = [c for c in conditions if str(c.get("status")) == "True"]
    if not current:
        return JobState("Pending", "")
    for terminal in ("Failed", "Succeeded"):  # terminal conditions outrank any later Running
        hit = [c for c in current if c.get("type") == terminal]
        if hit:
            return JobState(terminal, str(hit[-1].get("message", "")))
    last = current[-1]
    return JobState(str(last.get("type")), str(last.get("message", "")))


# --- launching (needs a cluster: on paper only here) --------------------------------------------


def current_namespace() -> str:
    """GENPIPE_TFJOB_NAMESPACE, else the pod's own namespace, else "kubeflow"."""
    if os.environ.get(ENV_NAMESPACE):
        return os.environ[ENV_NAMESPACE]
    if SA_NAMESPACE_FILE.is_file():
        return SA_NAMESPACE_FILE.read_text().strip()
    return "kubeflow"


def _load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def submit_tfjob(manifest: dict[str, Any], custom_api: Any = None) -> dict[str, Any]:
    """Create the TFJob; an existing job of the same name (a retried component) is reused."""
    from kubernetes.client.exceptions import ApiException

    if custom_api is None:
        from kubernetes import client

        _load_kube_config()
        custom_api = client.CustomObjectsApi()
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return custom_api.create_namespaced_custom_object(
            TFJOB_GROUP, TFJOB_VERSION, ns, TFJOB_PLURAL, manifest
        )
    except ApiException as e:
        if e.status == 409:  # already exists: a retry of the same run waits for the same job
            return custom_api.get_namespaced_custom_object(
                TFJOB_GROUP, TFJOB_VERSION, ns, TFJOB_PLURAL, name
            )
        if e.status == 404:
            raise GenpipeError(
                "the cluster has no TFJob resource (kubeflow.org/v1 tfjobs): install the "
                "Kubeflow Training Operator, or train with distribution=single/mirrored"
            ) from None
        raise GenpipeError(f"cannot create TFJob {ns}/{name}: {e.status} {e.reason}") from None


def stream_logs(
    name: str,
    namespace: str,
    seen: int,
    core_api: Any,
    out: Callable[[str], None] = print,
) -> int:
    """Print worker 0's log lines after the first `seen`; returns the new count."""
    from kubernetes.client.exceptions import ApiException

    selector = f"{LABEL_JOB_NAME}={name},{LABEL_REPLICA_TYPE}=worker,{LABEL_REPLICA_INDEX}=0"
    try:
        pods = core_api.list_namespaced_pod(namespace, label_selector=selector).items
        if not pods:
            return seen
        text = core_api.read_namespaced_pod_log(
            pods[0].metadata.name, namespace, container=TF_CONTAINER
        )
    except ApiException:
        return seen  # pod not started yet / being restarted: try again on the next poll
    lines = text.splitlines()
    if len(lines) < seen:  # the container restarted: its log starts over
        seen = 0
    for line in lines[seen:]:
        out(line)
    return len(lines)


def wait_tfjob(
    name: str,
    namespace: str,
    timeout_s: float = 24 * 3600,
    poll_s: float = 10.0,
    custom_api: Any = None,
    core_api: Any = None,
    out: Callable[[str], None] = print,
) -> JobState:
    """Poll the TFJob until it succeeds (returned) or fails (GenpipeError with its message).

    Worker 0's log is streamed to `out` meanwhile, so it lands in the train component's log.
    """
    if custom_api is None or core_api is None:
        from kubernetes import client

        _load_kube_config()
        custom_api = custom_api or client.CustomObjectsApi()
        core_api = core_api or client.CoreV1Api()
    deadline = time.monotonic() + timeout_s
    seen = 0
    last_phase = ""
    while True:
        obj = custom_api.get_namespaced_custom_object(
            TFJOB_GROUP, TFJOB_VERSION, namespace, TFJOB_PLURAL, name
        )
        state = job_state(obj)
        if state.phase != last_phase:
            out(f"genpipe-tfjob {namespace}/{name} phase={state.phase} {state.message}".rstrip())
            last_phase = state.phase
        seen = stream_logs(name, namespace, seen, core_api, out)
        if state.phase == "Succeeded":
            return state
        if state.phase == "Failed":
            raise GenpipeError(
                f"TFJob {namespace}/{name} failed: {state.message or 'no message'}; "
                f"see `kubectl logs -n {namespace} -l {LABEL_JOB_NAME}={name}`"
            )
        if time.monotonic() > deadline:
            raise GenpipeError(
                f"TFJob {namespace}/{name} did not finish within {timeout_s:.0f} s "
                f"(phase {state.phase}); it is left running"
            )
        time.sleep(poll_s)


def launch_from_component(
    model: str, manifest_uri: str, mlflow_run_id: str, preset: str, overrides: str
) -> str:
    """Submit the run's TFJob, wait for it, and return the s3:// URI of the trained model dir.

    Configured by environment (set on the train task): GENPIPE_TFJOB_WORKERS (>= 2),
    GENPIPE_TFJOB_IMAGE (default: GENPIPE_IMAGE), GENPIPE_TFJOB_NAMESPACE,
    GENPIPE_TFJOB_GPUS_PER_WORKER.
    """
    from pipelines.platform import (
        CONFIG_MAP,
        SECRET_MLFLOW,
        SECRET_S3,
    )
    from zoo.storage import ObjectStore

    workers = _env_int(ENV_WORKERS, 2)
    image = os.environ.get(ENV_IMAGE) or os.environ.get("GENPIPE_IMAGE", "")
    spec = TFJobSpec(
        name=job_name(mlflow_run_id),
        namespace=current_namespace(),
        image=image,
        command=worker_command(model, manifest_uri, mlflow_run_id, preset, overrides),
        workers=workers,
        gpus_per_worker=_env_int(ENV_GPUS, 0),
        secret_env=[(SECRET_S3, False), (SECRET_MLFLOW, True)],
        config_map_env=[(CONFIG_MAP, False)],
        labels={"genpipe/mlflow-run-id": mlflow_run_id[:63]},
    )
    manifest = tfjob_manifest(spec)
    submit_tfjob(manifest)
    wait_tfjob(spec.name, spec.namespace)
    return ObjectStore.from_env().uri(model_prefix(mlflow_run_id))


def model_prefix(mlflow_run_id: str) -> str:
    """Where the chief of a TFJob uploads the trained model directory."""
    return f"models/{mlflow_run_id}/model"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


# --- the worker process ---------------------------------------------------------------------------


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
    import tempfile

    from components.common import fetch_dataset
    from zoo import models, tracking
    from zoo.storage import ObjectStore
    from zoo.train import train_for_run

    cfg = models.resolve_config(model, preset, json.loads(overrides or "{}"), where="overrides")
    if cfg.distribution not in ("multi_worker", "auto"):
        raise ConfigError(
            f"a TFJob worker needs distribution multi_worker or auto, not {cfg.distribution!r}"
        )
    info = cluster_info()
    store = ObjectStore.from_env()
    data = fetch_dataset(manifest_uri)
    logger = tracking.RunLogger(tracking.client(), mlflow_run_id) if info.is_chief else None
    with tempfile.TemporaryDirectory(prefix="genpipe-worker-") as work:
        result = train_for_run(model, cfg, data, Path(work), store, mlflow_run_id, logger)
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
