"""KServe InferenceService for a registered model, and where its files really are.

The predictor runs on genpipe's ServingRuntime `genpipe-mlserver` (k8s/serving/
servingruntime.yaml: MLServer with the MLflow runtime and TensorFlow, images/Dockerfile.serving),
never on KServe's stock MLServer image, which has no TensorFlow. That image is CPU-only, so the
predictor never asks for a GPU; with a GPU profile it is kept off the profile's GPU nodes.

KServe's storage initializer downloads `storageUri` itself (s3://, gs://, ...); it cannot
resolve MLflow's `models:/name@alias` nor the proxied `mlflow-artifacts:/` scheme. So the
alias is resolved to a version here, and the version's source to the object-store URI behind
the MLflow server: with `mlflow server --artifacts-destination s3://BUCKET/PREFIX`, the
proxied path `mlflow-artifacts:/P` is stored at `s3://BUCKET/PREFIX/P`.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlparse

from zoo.errors import ConfigError, GenpipeError

ENV_ARTIFACTS_DESTINATION = "GENPIPE_MLFLOW_ARTIFACTS_DESTINATION"
DEFAULT_SERVICE_ACCOUNT = "genpipe-kserve"
#: metadata.name of k8s/serving/servingruntime.yaml
SERVING_RUNTIME = "genpipe-mlserver"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DIRECT_SCHEMES = ("s3", "gs", "abfs", "wasbs", "https", "http", "pvc", "hdfs", "oci")


def artifacts_destination(value: str = "") -> str:
    """The MLflow server's --artifacts-destination (flag, env, else the embedded stack's)."""
    from genpipe.ops.stack import MLFLOW_ARTIFACTS

    dest = value or os.environ.get(ENV_ARTIFACTS_DESTINATION, "") or MLFLOW_ARTIFACTS
    if urlparse(dest).scheme not in _DIRECT_SCHEMES:
        raise ConfigError(
            f"artifacts destination {dest!r} is not an object-store URI such as "
            "s3://genpipe-mlflow/artifacts (the MLflow server's --artifacts-destination)"
        )
    return dest.rstrip("/")


def storage_uri(source: str, destination: str | None = None, client: Any = None) -> str:
    """The object-store URI of a model version's `source` (see module docstring).

    `destination` is the MLflow server's --artifacts-destination (None: `artifacts_destination()`).
    """
    destination = destination or artifacts_destination()
    parsed = urlparse(source)
    if parsed.scheme == "mlflow-artifacts":
        # mlflow-artifacts:/1/models/m-x/artifacts or mlflow-artifacts://host:port/1/...
        return f"{destination.rstrip('/')}/{parsed.path.lstrip('/')}"
    if parsed.scheme == "models" and client is not None:
        model_id = source.removeprefix("models:/").strip("/")
        if model_id.startswith("m-"):
            return storage_uri(client.get_logged_model(model_id).artifact_location, destination)
    if parsed.scheme == "runs" and client is not None:
        run_id, _, path = parsed.path.lstrip("/").partition("/")
        base = client.get_run(run_id).info.artifact_uri
        return storage_uri(f"{base.rstrip('/')}/{path}", destination)
    if parsed.scheme in _DIRECT_SCHEMES:
        return source
    raise GenpipeError(
        f"model source {source!r} is not on an object store KServe can read "
        f"(schemes: {', '.join(_DIRECT_SCHEMES)}, or mlflow-artifacts:/ behind the MLflow proxy)"
    )


def service_name(name: str) -> str:
    """A DNS-1035 InferenceService name from a registered model name."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if out and not out[0].isalpha():
        out = "m-" + out
    out = out[:45].rstrip("-")  # KServe derives longer names (predictor-..., hostnames) from it
    if not _DNS1035.match(out):
        raise ConfigError(f"cannot derive an InferenceService name from {name!r}; pass --name")
    return out


def check_runtime(runtime: str) -> str:
    """`runtime` if it can name a ServingRuntime, else one error line naming it."""
    if not runtime or not _DNS1035.match(runtime):
        raise ConfigError(
            f"--runtime {runtime!r} is not a ServingRuntime name (lowercase letters, digits "
            f"and '-'), e.g. {SERVING_RUNTIME}"
        )
    return runtime


def render_inference_service(
    name: str,
    storage: str,
    *,
    namespace: str,
    registered_name: str,
    version: str,
    alias: str,
    source: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    profile: Any = None,
    runtime: str = SERVING_RUNTIME,
    cpu: tuple[str, str] = ("1", "2"),
    memory: tuple[str, str] = ("2Gi", "4Gi"),
) -> dict[str, Any]:
    """The InferenceService (MLflow model format, V2 protocol) for one model version.

    `runtime` names the ServingRuntime (default genpipe's). The serving image is CPU-only: no
    profile adds a GPU or GPU tolerations. With a GPU profile (pipelines.platform.Profile) the
    predictor gets a required node affinity that keeps it off the nodes the profile's GPU
    node selector picks (a CPU server should not hold a GPU node; tainted pools refuse it anyway).
    """
    if not _DNS1035.match(name):
        raise ConfigError(
            f"InferenceService name {name!r} must be lowercase letters, digits and '-', "
            "starting with a letter"
        )
    check_runtime(runtime)
    model: dict[str, Any] = {
        "modelFormat": {"name": "mlflow"},
        "protocolVersion": "v2",
        "runtime": runtime,
        "storageUri": storage,
        "resources": {
            "requests": {"cpu": cpu[0], "memory": memory[0]},
            "limits": {"cpu": cpu[1], "memory": memory[1]},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    predictor: dict[str, Any] = {"serviceAccountName": service_account, "model": model}
    avoid = gpu_node_affinity(profile)
    if avoid:
        predictor["affinity"] = avoid
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "genpipe",
                "app.kubernetes.io/component": "serving",
            },
            "annotations": {
                "genpipe.io/registered-model": registered_name,
                "genpipe.io/version": str(version),
                "genpipe.io/alias": alias,
                "genpipe.io/mlflow-source": source,
            },
        },
        "spec": {"predictor": predictor},
    }


def gpu_node_affinity(profile: Any) -> dict[str, Any]:
    """A pod `affinity` that refuses the nodes a GPU profile's node selector matches ({} else).

    A node is a GPU node when it carries every label of the selector, so it is avoided when
    any one differs: one node-selector term (terms are ORed) per label, with NotIn.
    """
    if profile is None or not profile.has_accelerator or not profile.node_selector:
        return {}
    terms = [
        {"matchExpressions": [{"key": key, "operator": "NotIn", "values": [value]}]}
        for key, value in sorted(profile.node_selector.items())
    ]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }
