"""Kubeflow TFJobs (kubeflow.org/v1, Training Operator): render, submit, wait, stream logs.

Operations layer. The TFJob's platform half (image, GPU, node selector, tolerations, security
context, cleanup, deadline, Secret/ConfigMap env) is built at compile time from the cluster
profile by `pipelines.platform.tfjob_template` and compiled into the pipeline as the train
task's constant input `tfjob`. At run time the train task (the launcher) only fills in what
belongs to the run (`render`): the job's name and namespace, the run label and the workers'
command. So this module never reads a profile or an environment variable for the job's shape.

Tested here: rendering (validated against the upstream TFJob CRD in tests), job status
conditions, waiting and log streaming against a stand-in Kubernetes API. On paper only (no
Kubernetes API server on the development machine): the calls against a live cluster with the
Training Operator installed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, GenpipeError

TFJOB_GROUP = "kubeflow.org"
TFJOB_VERSION = "v1"
TFJOB_PLURAL = "tfjobs"
TFJOB_KIND = "TFJob"
TFJOB_API_VERSION = f"{TFJOB_GROUP}/{TFJOB_VERSION}"
# The Training Operator finds the TensorFlow container by this name (and sets TF_CONFIG in it).
TF_CONTAINER = "tensorflow"
TF_PORT = 2222
TF_PORT_NAME = "tfjob-port"
# Labels the Training Operator puts on the pods of a job.
LABEL_JOB_NAME = "training.kubeflow.org/job-name"
LABEL_REPLICA_TYPE = "training.kubeflow.org/replica-type"
LABEL_REPLICA_INDEX = "training.kubeflow.org/replica-index"
LABEL_RUN = "genpipe.io/mlflow-run-id"
# The launcher's own namespace, set on its pod from metadata.namespace (downward API) at
# compile time; the service-account file is the fallback for pods compiled without it.
ENV_POD_NAMESPACE = "GENPIPE_POD_NAMESPACE"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Time the launcher waits past the job's own activeDeadlineSeconds for the operator to mark it
# failed (so the error carries the operator's message, not ours).
DEADLINE_GRACE_S = 300
DEFAULT_WAIT_S = 24 * 3600

#: The Kubernetes permissions the launcher needs in its namespace, one (apiGroup, resource,
#: verb) per kubernetes-client method this module calls. The Role genpipe-tfjob-launcher in
#: k8s/pipeline-namespace/rbac.yaml grants exactly these (tests/k8s/test_manifests.py), and a
#: test keeps this table in step with the calls below.
LAUNCHER_RBAC: dict[str, tuple[str, str, str]] = {
    "create_namespaced_custom_object": (TFJOB_GROUP, TFJOB_PLURAL, "create"),
    "get_namespaced_custom_object": (TFJOB_GROUP, TFJOB_PLURAL, "get"),
    "delete_namespaced_custom_object": (TFJOB_GROUP, TFJOB_PLURAL, "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
}

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def job_name(mlflow_run_id: str, prefix: str = "genpipe-train") -> str:
    """A DNS-1123 TFJob name derived from the MLflow run id (stable across component retries)."""
    return f"{prefix}-{re.sub(r'[^a-z0-9]', '', mlflow_run_id.lower())[:40]}".rstrip("-")


def worker_command(
    model: str, manifest_uri: str, mlflow_run_id: str, preset: str, overrides: str
) -> list[str]:
    """The command every worker pod runs (the entry point in zoo.distributed)."""
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


# --- rendering -------------------------------------------------------------------------------


def parse_template(text: str) -> dict[str, Any]:
    """The train task's compiled `tfjob` input (JSON) as a TFJob template; ConfigError if not."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"train input tfjob is not JSON ({e.msg}): {text[:120]!r}") from None
    where = "train input tfjob"
    if not isinstance(obj, dict) or (obj.get("apiVersion"), obj.get("kind")) != (
        TFJOB_API_VERSION,
        TFJOB_KIND,
    ):
        raise ConfigError(f"{where} is not a {TFJOB_API_VERSION} {TFJOB_KIND} template")
    replicas = (obj.get("spec") or {}).get("tfReplicaSpecs") or {}
    if set(replicas) != {"Worker"}:
        raise ConfigError(
            f"{where}: tfReplicaSpecs must hold exactly one Worker entry, got {sorted(replicas)}"
        )
    _tf_container(obj)
    return obj


def _tf_container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    hits = [c for c in containers if c.get("name") == TF_CONTAINER]
    if len(hits) != 1:
        raise ConfigError(f"train input tfjob: the Worker pod needs one {TF_CONTAINER!r} container")
    return hits[0]


def render(
    template: dict[str, Any], *, mlflow_run_id: str, namespace: str, command: list[str]
) -> dict[str, Any]:
    """The TFJob for one run: the compiled template plus name, namespace, run label, command."""
    name = job_name(mlflow_run_id)
    if len(name) > 63 or not _DNS1123.match(name):
        raise ConfigError(
            f"TFJob name {name!r} (from MLflow run {mlflow_run_id!r}) is no DNS label"
        )
    if not _DNS1123.match(namespace):
        raise ConfigError(f"namespace {namespace!r} is not a DNS-1123 label")
    if not command:
        raise ConfigError("the TFJob workers' command must not be empty")
    obj = copy.deepcopy(template)
    run_label = re.sub(r"[^A-Za-z0-9_.-]", "", mlflow_run_id)[:63].strip("-_.")
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    meta.setdefault("labels", {})[LABEL_RUN] = run_label
    pod_meta = obj["spec"]["tfReplicaSpecs"]["Worker"]["template"].setdefault("metadata", {})
    pod_meta.setdefault("labels", {})[LABEL_RUN] = run_label
    _tf_container(obj)["command"] = list(command)
    return obj


def wait_seconds(manifest: dict[str, Any]) -> float:
    """How long to wait for a job: its activeDeadlineSeconds plus a grace, else a day."""
    deadline = ((manifest.get("spec") or {}).get("runPolicy") or {}).get("activeDeadlineSeconds")
    return float(deadline) + DEADLINE_GRACE_S if deadline else float(DEFAULT_WAIT_S)


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


# --- the cluster (on paper only here) -----------------------------------------------------------


def current_namespace(environ: dict[str, str] | None = None) -> str:
    """The launcher pod's namespace: GENPIPE_POD_NAMESPACE (downward API), else its SA file."""
    env = os.environ if environ is None else environ
    if env.get(ENV_POD_NAMESPACE):
        return env[ENV_POD_NAMESPACE]
    if SA_NAMESPACE_FILE.is_file():
        return SA_NAMESPACE_FILE.read_text().strip()
    raise GenpipeError(
        f"cannot tell this pod's namespace: {ENV_POD_NAMESPACE} is unset and "
        f"{SA_NAMESPACE_FILE} does not exist (compile the pipeline with genpipe, which sets it)"
    )


def _apis(custom_api: Any, core_api: Any) -> tuple[Any, Any]:
    """The given clients, else new ones from the in-cluster config (else ~/.kube/config)."""
    if custom_api is None or core_api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        custom_api = custom_api or client.CustomObjectsApi()
        core_api = core_api or client.CoreV1Api()
    return custom_api, core_api


def submit_tfjob(
    manifest: dict[str, Any],
    custom_api: Any = None,
    delete_timeout_s: float = 300.0,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """Create the TFJob. A job of the same name is the same run's (a retried train task):
    a live or succeeded one is reused (waited for); a failed one is deleted and created again,
    so the retry trains again, resuming from the run's newest checkpoint."""
    from kubernetes.client.exceptions import ApiException

    if custom_api is None:
        custom_api, _ = _apis(None, None)
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    args = (TFJOB_GROUP, TFJOB_VERSION, ns, TFJOB_PLURAL)
    for _attempt in range(2):
        try:
            return custom_api.create_namespaced_custom_object(*args, manifest)
        except ApiException as e:
            if e.status != 409:
                raise _create_error(e, ns, name) from None
        existing = custom_api.get_namespaced_custom_object(*args, name)
        if job_state(existing).phase != "Failed":
            return existing
        _delete_and_wait(custom_api, args, name, delete_timeout_s, poll_s)
    raise GenpipeError(f"TFJob {ns}/{name} was re-created by someone else while replacing it")


def _create_error(e: Any, ns: str, name: str) -> GenpipeError:
    if e.status == 404:
        return GenpipeError(
            "the cluster has no TFJob resource (kubeflow.org/v1 tfjobs): install the "
            "Kubeflow Training Operator, or compile with workers: 1"
        )
    if e.status == 403:
        return GenpipeError(
            f"the train task's service account may not create tfjobs.kubeflow.org in {ns} "
            f"(403 {e.reason}): grant create/get/delete on tfjobs, list on pods and get on "
            "pods/log (docs/distributed.md)"
        )
    return GenpipeError(f"cannot create TFJob {ns}/{name}: {e.status} {e.reason}")


def _delete_and_wait(
    custom_api: Any, args: tuple[str, ...], name: str, timeout_s: float, poll_s: float
) -> None:
    """Delete a failed job (its pods go with it) and wait until its name is free."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom_api.delete_namespaced_custom_object(
            *args, name, body={"propagationPolicy": "Foreground"}
        )
    except ApiException as e:
        if e.status != 404:
            raise GenpipeError(
                f"cannot delete the failed TFJob {args[2]}/{name} to retry it: "
                f"{e.status} {e.reason}"
            ) from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            custom_api.get_namespaced_custom_object(*args, name)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise GenpipeError(
                f"the failed TFJob {args[2]}/{name} was not deleted within {timeout_s:.0f} s"
            )
        time.sleep(poll_s)


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
    timeout_s: float = DEFAULT_WAIT_S,
    poll_s: float = 10.0,
    custom_api: Any = None,
    core_api: Any = None,
    out: Callable[[str], None] = print,
) -> JobState:
    """Poll the TFJob until it succeeds (returned) or fails (GenpipeError with its message).

    Worker 0's log is streamed to `out` meanwhile, so it lands in the train component's log.
    """
    custom_api, core_api = _apis(custom_api, core_api)
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
                f"(phase {state.phase}); it is left to its activeDeadlineSeconds and TTL"
            )
        time.sleep(poll_s)


def launch(
    template: dict[str, Any],
    model: str,
    manifest_uri: str,
    mlflow_run_id: str,
    preset: str,
    overrides: str,
    *,
    namespace: str | None = None,
    custom_api: Any = None,
    core_api: Any = None,
    poll_s: float = 10.0,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Render the run's TFJob from the compiled template, create it and wait; returns it."""
    manifest = render(
        template,
        mlflow_run_id=mlflow_run_id,
        namespace=namespace or current_namespace(),
        command=worker_command(model, manifest_uri, mlflow_run_id, preset, overrides),
    )
    custom_api, core_api = _apis(custom_api, core_api)
    submit_tfjob(manifest, custom_api)
    meta = manifest["metadata"]
    wait_tfjob(
        meta["name"],
        meta["namespace"],
        timeout_s=wait_seconds(manifest),
        poll_s=poll_s,
        custom_api=custom_api,
        core_api=core_api,
        out=out,
    )
    return manifest
