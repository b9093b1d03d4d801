"""The one place where a cluster profile is applied to KFP pipeline tasks and TFJobs.

A `Profile` (pipelines/profile.py) says where each pipeline step (role) runs: image,
CPU/memory, GPU, node selector, tolerations, timeout, and how many TFJob workers train.
`apply_platform` turns a profile plus a role into calls on a `kfp.dsl.PipelineTask`;
`tfjob_template` turns the same profile into the TFJob the train task launches when `workers`
>= 2, with the same scheduling, env references and security settings, so every pod genpipe
starts is configured here.

Credentials reach the containers only as Kubernetes Secret references (`use_secret_as_env`), and
endpoints as ConfigMap references: the compiled pipeline YAML names the Secret and its keys but
never holds a value, so it can be committed, shared and uploaded to KFP safely.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from genpipe.ops import tfjob

# Profiles and their loading live in pipelines.profile; re-exported for callers of this module.
from pipelines.profile import (
    IMAGE_PULL_POLICIES,
    LAUNCHER,
    RESOURCE_ROLES,
    ROLES,
    Profile,
    RoleResources,
    cpu_variant,
    load_profile,
    profile_names,
)
from zoo.errors import ConfigError
from zoo.settings import (
    ENV_ACCESS_KEY,
    ENV_BUCKET,
    ENV_MLFLOW_URI,
    ENV_S3_ENDPOINT,
    ENV_SECRET_KEY,
)

__all__ = [
    "CONFIG_MAP",
    "IMAGE_PULL_POLICIES",
    "LAUNCHER",
    "POD_LABELS",
    "RESOURCE_ROLES",
    "ROLES",
    "SECRET_MLFLOW",
    "SECRET_S3",
    "EnvSource",
    "Profile",
    "RoleResources",
    "apply_platform",
    "container_resources",
    "cpu_variant",
    "env_refs",
    "env_sources",
    "load_profile",
    "pod_scheduling",
    "profile_names",
    "tfjob_template",
]

# Kubernetes objects a cluster admin creates once per pipeline namespace. Key names equal the
# environment variable names the components read (zoo.settings), so `kubectl create secret
# generic genpipe-s3 --from-env-file=...` works without a mapping.
SECRET_S3 = "genpipe-s3"
SECRET_MLFLOW = "genpipe-mlflow"
CONFIG_MAP = "genpipe-config"

ENV_MLFLOW_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"

S3_SECRET_KEYS = {ENV_ACCESS_KEY: ENV_ACCESS_KEY, ENV_SECRET_KEY: ENV_SECRET_KEY}
MLFLOW_SECRET_KEYS = {
    ENV_MLFLOW_USERNAME: ENV_MLFLOW_USERNAME,
    ENV_MLFLOW_PASSWORD: ENV_MLFLOW_PASSWORD,
}
# Settings.from_env fails without these two, so a missing key should fail the pod at start
# (CreateContainerConfigError names it) rather than deep inside a step.
CONFIG_MAP_REQUIRED_KEYS = {ENV_S3_ENDPOINT: ENV_S3_ENDPOINT, ENV_MLFLOW_URI: ENV_MLFLOW_URI}
# The bucket has a default in zoo.settings, so the key may be left out of the ConfigMap.
CONFIG_MAP_OPTIONAL_KEYS = {ENV_BUCKET: ENV_BUCKET}

# The numeric user and group of the genpipe images (images/Dockerfile.*: USER 10001:10001).
RUN_AS_USER = 10001
RUN_AS_GROUP = 10001
# The launcher's pod outlives its TFJob's activeDeadlineSeconds (the train timeout) by this
# much, so it can report the operator's verdict and log the model instead of being killed.
LAUNCHER_GRACE_S = 1800
# What the workers' pods and containers run with: the Pod Security Standards "restricted"
# profile, plus a read-only root filesystem (the images send every cache to /tmp, an emptyDir).
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_GROUP,
    "fsGroup": RUN_AS_GROUP,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
TMP_VOLUME = "tmp"
# On every pod genpipe starts (pipeline steps and TFJob workers): the egress NetworkPolicies
# in k8s/pipeline-namespace select genpipe's pods by it.
POD_LABELS = {"genpipe.io/pipeline": "true"}


@dataclass(frozen=True)
class EnvSource:
    """Keys of one Secret or ConfigMap that become env vars (key name = variable name)."""

    kind: str  # "secret" | "config_map"
    name: str
    keys: tuple[str, ...]
    optional: bool


def env_sources() -> tuple[EnvSource, ...]:
    """What every genpipe pod (pipeline task or TFJob worker) reads from the cluster.

    The MLflow Secret is optional: a tracking server without auth needs none, and the pod must
    still start. A missing required key fails the pod at start (CreateContainerConfigError
    names it) rather than deep inside a step.
    """
    return (
        EnvSource("secret", SECRET_S3, tuple(S3_SECRET_KEYS), False),
        EnvSource("secret", SECRET_MLFLOW, tuple(MLFLOW_SECRET_KEYS), True),
        EnvSource("config_map", CONFIG_MAP, tuple(CONFIG_MAP_REQUIRED_KEYS), False),
        EnvSource("config_map", CONFIG_MAP, tuple(CONFIG_MAP_OPTIONAL_KEYS), True),
    )


def apply_platform(
    task: dsl.PipelineTask,
    profile: Profile,
    role: str,
    *,
    image: str | None = None,
    tfjob_launcher: bool = False,
) -> dsl.PipelineTask:
    """Configure `task` as pipeline role `role` on `profile`; returns the task.

    Sets CPU/memory for the role, accelerator + node selector + tolerations for
    `profile.gpu_roles`, the S3 and MLflow credentials as Secret references, endpoints as
    ConfigMap references, the image pull policy, a non-root security context and the role's
    timeout (activeDeadlineSeconds). Unknown roles raise ConfigError.

    `tfjob_launcher` (train only): the task launches a TFJob and waits, so it gets the small
    `launcher` resources, no GPU and no GPU-pool scheduling, a timeout that outlives the job's
    own deadline, and its namespace as GENPIPE_POD_NAMESPACE (where it creates the job).

    The container image stays the component's `base_image` (builders pass
    `profile.image_for(role)` there) unless `image` is given, which overrides it per task.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown pipeline role {role!r}: valid roles are {', '.join(ROLES)}")
    if tfjob_launcher and role != "train":
        raise ConfigError(f"only the train role can launch a TFJob, not {role!r}")
    res = profile.resources[LAUNCHER if tfjob_launcher else role]
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    if image:
        # Only on request: defaulting to profile.image here would silently undo an image
        # override that a builder already baked into the component.
        task.set_container_image(image)

    if profile.gpu_role(role) and not tfjob_launcher:
        if profile.has_accelerator:
            task.set_accelerator_type(profile.accelerator_type)
            task.set_accelerator_limit(profile.accelerator_limit)
        # Applied even without an accelerator so a CPU profile can pin training to a pool.
        for key, value in sorted(profile.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in profile.tolerations:
            kubernetes.add_toleration(
                task,
                key=tol.get("key"),
                operator=tol.get("operator"),
                value=tol.get("value"),
                effect=tol.get("effect"),
                toleration_seconds=tol.get("toleration_seconds"),
            )

    # Every role talks to the object store and to MLflow.
    for src in env_sources():
        keys = {k: k for k in src.keys}
        if src.kind == "secret":
            kubernetes.use_secret_as_env(
                task, secret_name=src.name, secret_key_to_env=keys, optional=src.optional
            )
        else:
            kubernetes.use_config_map_as_env(
                task, config_map_name=src.name, config_map_key_to_env=keys, optional=src.optional
            )
    kubernetes.set_image_pull_policy(task, profile.image_pull_policy)
    for key, value in POD_LABELS.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    # kfp-kubernetes 2.17 sets the identity fields; KFP's backend adds its own defaults
    # (no privilege escalation, capabilities dropped). A read-only root filesystem is not
    # offered for pipeline pods: KFP's launcher writes artifacts under the root filesystem.
    if profile.security_context:
        kubernetes.set_security_context(
            task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_GROUP, run_as_non_root=True
        )
    timeout = profile.timeouts[role] + (LAUNCHER_GRACE_S if tfjob_launcher else 0)
    kubernetes.set_timeout(task, timeout)
    if tfjob_launcher:
        kubernetes.use_field_path_as_env(
            task, env_name=tfjob.ENV_POD_NAMESPACE, field_path="metadata.namespace"
        )
    return task


# --- pods genpipe creates itself (TFJob workers; KServe predictors) ---------------------------


def env_refs() -> list[dict[str, Any]]:
    """`env` entries of a container: the same Secret/ConfigMap keys as the pipeline pods."""
    out = []
    for src in env_sources():
        ref = "secretKeyRef" if src.kind == "secret" else "configMapKeyRef"
        for key in src.keys:
            out.append(
                {
                    "name": key,
                    "valueFrom": {ref: {"name": src.name, "key": key, "optional": src.optional}},
                }
            )
    return out


def pod_scheduling(profile: Profile, role: str) -> dict[str, Any]:
    """PodSpec fields placing a pod of `role`: nodeSelector and tolerations (gpu_roles only)."""
    if not profile.gpu_role(role):
        return {}
    out: dict[str, Any] = {}
    if profile.node_selector:
        out["nodeSelector"] = dict(sorted(profile.node_selector.items()))
    if profile.tolerations:
        out["tolerations"] = [
            {("tolerationSeconds" if k == "toleration_seconds" else k): v for k, v in t.items()}
            for t in profile.tolerations
        ]
    return out


def container_resources(profile: Profile, role: str) -> dict[str, Any]:
    """A container's `resources` for `role`: the profile's CPU/memory, plus its GPU limit."""
    res = profile.resources[role]
    limits: dict[str, Any] = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if profile.has_accelerator and profile.gpu_role(role):
        assert profile.accelerator_type is not None  # has_accelerator
        limits[profile.accelerator_type] = profile.accelerator_limit
    return {"requests": {"cpu": res.cpu_request, "memory": res.memory_request}, "limits": limits}


def tfjob_template(profile: Profile, workers: int | None = None) -> dict[str, Any]:
    """The TFJob (kubeflow.org/v1) a multi-worker train task creates, minus the run's parts.

    Compiled into the pipeline as the train task's constant input `tfjob`; at run time
    `genpipe.ops.tfjob.render` adds the job's name, namespace, run label and the workers' command.
    Workers run the train role's image (the launcher's own), resources, GPU, node selector and
    tolerations; a restricted security context with a read-only root filesystem and an
    emptyDir /tmp; no service-account token (they call no Kubernetes API); the pipeline pods'
    Secret/ConfigMap env. The job is deleted `tfjob_ttl_seconds` after it finishes, its running
    pods at once (cleanPodPolicy Running; finished pods keep their logs until the TTL), and it
    fails after the train timeout.
    """
    n = profile.workers if workers is None else workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"a TFJob needs workers >= 2, got {n!r} (profile {profile.name!r})")
    labels = {
        "app.kubernetes.io/name": "genpipe",
        "app.kubernetes.io/component": "train-worker",
        **POD_LABELS,
    }
    container = {
        "name": tfjob.TF_CONTAINER,
        "image": profile.image_for("train"),
        "imagePullPolicy": profile.image_pull_policy,
        "env": env_refs(),
        "ports": [{"name": tfjob.TF_PORT_NAME, "containerPort": tfjob.TF_PORT, "protocol": "TCP"}],
        "resources": container_resources(profile, "train"),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    pod = {
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        **pod_scheduling(profile, "train"),
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
    }
    return {
        "apiVersion": tfjob.TFJOB_API_VERSION,
        "kind": tfjob.TFJOB_KIND,
        "metadata": {"labels": {"app.kubernetes.io/name": "genpipe"}},
        "spec": {
            "runPolicy": {
                "cleanPodPolicy": "Running",
                "ttlSecondsAfterFinished": profile.tfjob_ttl_seconds,
                "activeDeadlineSeconds": profile.timeouts["train"],
                "backoffLimit": 2,
            },
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": n,
                    "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": labels}, "spec": pod},
                }
            },
        },
    }
