"""The one place where platform config is applied to KFP pipeline tasks.

A `Profile` says where each pipeline step (role) runs: image, CPU/memory, GPU, node selector,
tolerations, timeout, and how many TFJob workers train. Profiles come from
`pipelines/profiles.yaml` (by name) or a user YAML file (by path). `apply_platform` turns a
profile plus a role into calls on a `kfp.dsl.PipelineTask`; `tfjob_template` turns the same
profile into the TFJob the train task launches when `workers` >= 2, with the same scheduling,
env references and security settings, so every pod genpipe starts is configured here.

Credentials reach the containers only as Kubernetes Secret references (`use_secret_as_env`), and
endpoints as ConfigMap references: the compiled pipeline YAML names the Secret and its keys but
never holds a value, so it can be committed, shared and uploaded to KFP safely.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from kfp import dsl, kubernetes

import zoo
from genpipe.ops import tfjob
from zoo.config import PRECISIONS
from zoo.errors import ConfigError
from zoo.settings import (
    ENV_ACCESS_KEY,
    ENV_BUCKET,
    ENV_MLFLOW_URI,
    ENV_S3_ENDPOINT,
    ENV_SECRET_KEY,
)

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

# `finalize`: the pipeline's exit task (components/finalize.py), which ends an MLflow run that
# a task killed outright left RUNNING; small, CPU only, configured like every other step.
ROLES = ("ingest", "train", "evaluate", "register", "finalize")
# `launcher`: the train task of a multi-worker pipeline, which only creates the TFJob and waits
# (no GPU, small); its resources are configured like a role's.
LAUNCHER = "launcher"
RESOURCE_ROLES = (*ROLES, LAUNCHER)
RESOURCE_FIELDS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds")

_PROFILE_KEYS = (
    "name",
    "description",
    "image",
    "accelerator_type",
    "accelerator_limit",
    "node_selector",
    "tolerations",
    "gpu_roles",
    "resources",
    "image_pull_policy",
    "train_defaults",
    "cpu_image",
    "workers",
    "timeouts",
    "tfjob_ttl_seconds",
    "security_context",
)
#: Training settings a profile may default (the hardware decides them; the user's overrides
#: still win): the type each must have.
TRAIN_DEFAULT_KEYS: dict[str, type] = {"precision": str, "steps_per_call": int, "jit_compile": bool}
_BUILTIN_FILE = "profiles.yaml"

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

# The same patterns kfp 2.17 checks in PipelineTask.set_cpu_*/set_memory_* (it raises a bare
# ValueError at pipeline build time); checking at load time lets the error name file and key.
_CPU_RE = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY_RE = re.compile(r"^([0-9]+)(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_MEMORY_FACTORS = {
    None: 1,
    **{s: 1000**i for i, s in enumerate(("K", "M", "G", "T", "P", "E"), start=1)},
    **{s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


class _Invalid(Exception):
    """A bad value at `key` (dotted path inside a profile); turned into a ConfigError."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass
class RoleResources:
    """CPU and memory requests/limits of one role, as Kubernetes quantity strings."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


def default_resources() -> dict[str, RoleResources]:
    """Per-role resources from the `defaults` block of the built-in profiles.yaml."""
    raw = _builtin_document()["defaults"]["resources"]
    return {role: RoleResources(**raw[role]) for role in RESOURCE_ROLES}


def default_timeouts() -> dict[str, int]:
    """Per-role timeouts (seconds) from the `defaults` block of the built-in profiles.yaml."""
    return dict(_builtin_document()["defaults"]["timeouts"])


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


@dataclass
class Profile:
    """Where and with what each pipeline role runs on a cluster.

    Values are checked on construction (ConfigError naming the field), so a Profile that
    exists can be applied without kfp raising halfway through building a pipeline.
    """

    name: str
    description: str
    image: str
    accelerator_type: str | None = None
    accelerator_limit: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    gpu_roles: tuple[str, ...] = ("train", "evaluate")
    resources: dict[str, RoleResources] = field(default_factory=default_resources)
    image_pull_policy: str = "IfNotPresent"
    # Config defaults for the train step on this hardware, e.g. {precision: mixed_float16}.
    train_defaults: dict[str, Any] = field(default_factory=dict)
    # Image of the roles outside gpu_roles; None: the image's `-gpu` tag as `-cpu`.
    cpu_image: str | None = None
    # TFJob worker pods that train (>= 2: the train task launches a TFJob and waits).
    workers: int = 1
    # activeDeadlineSeconds per role: a hung step fails instead of holding its node forever.
    timeouts: dict[str, int] = field(default_factory=default_timeouts)
    # How long a finished TFJob (and its pods' logs) stays before the operator deletes it.
    tfjob_ttl_seconds: int = 3600
    # Pipeline pods run as uid/gid 10001, non-root (kfp-kubernetes set_security_context).
    # False only for KFP backends older than that field, whose driver refuses unknown fields.
    security_context: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.image, str):
            self.image = self.image.replace("{version}", zoo.__version__)
        if isinstance(self.cpu_image, str):
            self.cpu_image = self.cpu_image.replace("{version}", zoo.__version__)
        try:
            _validate(self)
        except _Invalid as e:
            raise ConfigError(f"profile {self.name!r}: {e}") from None

    @property
    def has_accelerator(self) -> bool:
        return bool(self.accelerator_type) and self.accelerator_limit > 0

    @property
    def multi_worker(self) -> bool:
        """Whether the train task launches a TFJob instead of training itself."""
        return self.workers >= 2

    def gpu_role(self, role: str) -> bool:
        """Whether `role`'s pods get the accelerator, node selector and tolerations."""
        return role in self.gpu_roles

    def image_for(self, role: str) -> str:
        """The image of `role`: the GPU image for accelerated roles, else the CPU image.

        A GPU image is several GB of CUDA libraries; ingest and register never use them.
        """
        if self.has_accelerator and not self.gpu_role(role):
            return self.cpu_image or cpu_variant(self.image)
        return self.image

    def with_image(self, image: str) -> Profile:
        """This profile with `image` (e.g. `--image`); the CPU image follows its tag."""
        return dataclasses.replace(self, image=image, cpu_image=cpu_variant(image))


def cpu_variant(image: str) -> str:
    """The CPU twin of a genpipe image: tag `X-gpu` -> `X-cpu`; other images unchanged."""
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag and "@" not in image and tag.endswith("-gpu"):
        return f"{repo}:{tag[: -len('gpu')]}cpu"
    return image


def profile_names() -> list[str]:
    """Names of the built-in profiles, in file order (`cpu` first)."""
    return list(_builtin_document()["profiles"])


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a user profile from a YAML file path.

    Unknown names raise ConfigError listing the valid ones; a bad file raises ConfigError
    naming the file and the offending key.
    """
    builtin = _builtin_document()
    if name_or_path in builtin["profiles"]:
        raw = builtin["profiles"][name_or_path]
        if not isinstance(raw, dict):
            raise ConfigError(f"{_builtin_path()}: profiles.{name_or_path}: expected a mapping")
        return _build(name_or_path, raw, _builtin_path(), f"profiles.{name_or_path}.", base=None)
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        return _load_user_file(path)
    raise ConfigError(
        f"unknown platform profile {name_or_path!r}: valid profiles are "
        f"{', '.join(profile_names())}, or the path of a profile YAML file"
    )


def resolve_profile(profile: Profile | str) -> Profile:
    """Accept a Profile or a profile name/path (what pipeline builders take as an argument)."""
    return profile if isinstance(profile, Profile) else load_profile(profile)


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


# --- loading ----------------------------------------------------------------------------------


def _builtin_path() -> str:
    return str(importlib_resources.files("pipelines").joinpath(_BUILTIN_FILE))


@functools.lru_cache(maxsize=1)
def _builtin_document_cached() -> dict[str, Any]:
    text = importlib_resources.files("pipelines").joinpath(_BUILTIN_FILE).read_text("utf-8")
    doc = _parse_yaml(text, _builtin_path())
    for key in ("defaults", "profiles"):
        if not isinstance(doc.get(key), dict):
            raise ConfigError(f"{_builtin_path()}: {key}: missing or not a mapping")
    return doc


def _builtin_document() -> dict[str, Any]:
    # A deep copy, so nothing a caller does to a loaded profile can change the cached file.
    return copy.deepcopy(_builtin_document_cached())


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of profile keys, got {type(doc).__name__}")
    return doc


def _load_user_file(path: Path) -> Profile:
    file = str(path)
    if not path.is_file():
        raise ConfigError(
            f"platform profile file {file} not found "
            f"(built-in profiles: {', '.join(profile_names())})"
        )
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: cannot read profile file: {e}") from None
    doc = _parse_yaml(text, file)
    name, prefix = path.stem, ""
    if "profiles" in doc:  # the layout of profiles.yaml itself, holding one profile
        entries = doc["profiles"]
        if not isinstance(entries, dict) or len(entries) != 1:
            raise ConfigError(f"{file}: profiles: expected a mapping with exactly one profile")
        ((name, doc),) = entries.items()
        prefix = f"profiles.{name}."
        if not isinstance(doc, dict):
            raise ConfigError(f"{file}: {prefix[:-1]}: expected a mapping of profile keys")
    doc = dict(doc)
    name = doc.pop("name", name)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{file}: {prefix}name: expected a non-empty string, got {name!r}")
    base = None
    if "extends" in doc:
        parent = doc.pop("extends")
        if parent not in profile_names():
            raise ConfigError(
                f"{file}: {prefix}extends: {parent!r} is not a built-in profile "
                f"(valid: {', '.join(profile_names())})"
            )
        base = _builtin_document()["profiles"][parent]
    return _build(name, doc, file, prefix, base)


def _build(
    name: str, raw: dict[str, Any], file: str, prefix: str, base: dict[str, Any] | None
) -> Profile:
    """Merge `raw` over `base` (a built-in profile) over the defaults; errors name file and key."""
    try:
        unknown = sorted(set(raw) - set(_PROFILE_KEYS))
        if unknown:
            valid = ", ".join(k for k in _PROFILE_KEYS if k != "name")
            raise _Invalid(unknown[0], f"unknown key; valid keys are {valid} (and extends)")
        defaults = _builtin_document()["defaults"]
        merged: dict[str, Any] = {**defaults, **(base or {}), **raw}
        if "image" not in merged:
            raise _Invalid("image", "missing (e.g. ghcr.io/genpipe/genpipe:{version}-cpu)")
        kwargs = {
            "name": name,
            "description": _str(merged.get("description", ""), "description", allow_empty=True),
            "image": _image(merged["image"]),
            "accelerator_type": _opt_str(merged.get("accelerator_type"), "accelerator_type"),
            "accelerator_limit": _int(merged.get("accelerator_limit", 0), "accelerator_limit"),
            "node_selector": _labels(merged.get("node_selector") or {}, "node_selector"),
            "tolerations": _tolerations(merged.get("tolerations") or [], "tolerations"),
            "gpu_roles": _roles(merged.get("gpu_roles"), "gpu_roles"),
            "resources": _resources(
                defaults["resources"], (base or {}).get("resources"), raw.get("resources")
            ),
            "image_pull_policy": _str(merged.get("image_pull_policy"), "image_pull_policy"),
            "train_defaults": copy.deepcopy(merged.get("train_defaults") or {}),
            "cpu_image": _image(merged["cpu_image"], "cpu_image")
            if merged.get("cpu_image") is not None
            else None,
            "workers": _int(merged.get("workers", 1), "workers"),
            "timeouts": _timeouts(
                defaults["timeouts"], (base or {}).get("timeouts"), raw.get("timeouts")
            ),
            "tfjob_ttl_seconds": _int(merged.get("tfjob_ttl_seconds", 3600), "tfjob_ttl_seconds"),
            "security_context": merged.get("security_context", True),
        }
        # Check here, not only in Profile.__post_init__, so the message names file and key.
        _validate(SimpleNamespace(**kwargs))
    except _Invalid as e:
        raise ConfigError(f"{file}: {prefix}{e}") from None
    return Profile(**kwargs)


def _resources(
    defaults: dict[str, Any], base: dict[str, Any] | None, raw: dict[str, Any] | None
) -> dict[str, RoleResources]:
    """Per-role resources: `raw` over `base` over `defaults`, field by field."""
    layers = [layer for layer in (base, raw) if layer is not None]
    for layer in layers:
        if not isinstance(layer, dict):
            raise _Invalid("resources", f"expected a mapping of role -> resources, got {layer!r}")
        for role, fields in layer.items():
            if role not in RESOURCE_ROLES:
                raise _Invalid(
                    f"resources.{role}",
                    f"unknown role; valid roles are {', '.join(RESOURCE_ROLES)}",
                )
            if not isinstance(fields, dict):
                raise _Invalid(
                    f"resources.{role}", f"expected a mapping with {', '.join(RESOURCE_FIELDS)}"
                )
            for f in fields:
                if f not in RESOURCE_FIELDS:
                    raise _Invalid(
                        f"resources.{role}.{f}",
                        f"unknown key; valid keys are {', '.join(RESOURCE_FIELDS)}",
                    )
    out = {}
    for role in RESOURCE_ROLES:
        values = dict(defaults[role])
        for layer in layers:
            values.update(layer.get(role) or {})
        out[role] = RoleResources(
            **{f: _quantity(values.get(f), f"resources.{role}.{f}") for f in RESOURCE_FIELDS}
        )
    return out


def _timeouts(
    defaults: dict[str, Any], base: dict[str, Any] | None, raw: dict[str, Any] | None
) -> dict[str, int]:
    """Per-role timeouts in seconds: `raw` over `base` over `defaults`, role by role."""
    out = dict(defaults)
    for layer in (base, raw):
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise _Invalid("timeouts", f"expected a mapping of role -> seconds, got {layer!r}")
        for role, seconds in layer.items():
            if role not in ROLES:
                raise _Invalid(
                    f"timeouts.{role}", f"unknown role; valid roles are {', '.join(ROLES)}"
                )
            out[role] = _int(seconds, f"timeouts.{role}")
    return out


# --- field checks -----------------------------------------------------------------------------


def _str(value: Any, key: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise _Invalid(
            key, f"expected a {'' if allow_empty else 'non-empty '}string, got {value!r}"
        )
    return value


def _opt_str(value: Any, key: str) -> str | None:
    return None if value in (None, "") else _str(value, key)


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(key, f"expected an integer, got {value!r}")
    return value


def _quantity(value: Any, key: str) -> str:
    # YAML reads `cpu_limit: 2` as an int; Kubernetes quantities are strings.
    if isinstance(value, bool) or value is None:
        raise _Invalid(key, f"expected a quantity string such as '2' or '4Gi', got {value!r}")
    return str(value) if isinstance(value, (int, float)) else _str(value, key)


def _image(value: Any, key: str = "image") -> str:
    image = _str(value, key).replace("{version}", zoo.__version__)
    if "{" in image or "}" in image:
        raise _Invalid(key, f"{value!r}: the only placeholder is {{version}}")
    return image


def _labels(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(key, f"expected a mapping of label -> value, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise _Invalid(key, f"label keys must be non-empty strings, got {k!r}")
        if isinstance(v, bool):  # an unquoted `true` in YAML; the label value is the string
            v = "true" if v else "false"
        elif isinstance(v, int):
            v = str(v)
        out[k] = _str(v, f"{key}.{k}", allow_empty=True)
    return out


def _tolerations(value: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _Invalid(key, f"expected a list of tolerations, got {value!r}")
    out = []
    for i, tol in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(tol, dict):
            raise _Invalid(where, f"expected a mapping with {', '.join(TOLERATION_KEYS)}")
        for k in tol:
            if k not in TOLERATION_KEYS:
                raise _Invalid(
                    f"{where}.{k}", f"unknown key; valid keys are {', '.join(TOLERATION_KEYS)}"
                )
        out.append({k: tol[k] for k in TOLERATION_KEYS if tol.get(k) is not None})
    return out


def _roles(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _Invalid(key, f"expected a list of roles ({', '.join(ROLES)}), got {value!r}")
    return tuple(value)


# --- value checks (also for profiles built in code) -------------------------------------------


def _validate(p: Any) -> None:
    """Raise _Invalid for the first bad value of `p` (a Profile or the same attributes)."""
    _str(p.name, "name")
    _check_image(p.image, "image")
    if p.cpu_image is not None:
        _check_image(p.cpu_image, "cpu_image")
    if p.image_pull_policy not in IMAGE_PULL_POLICIES:
        raise _Invalid(
            "image_pull_policy",
            f"{p.image_pull_policy!r} is not one of {', '.join(IMAGE_PULL_POLICIES)}",
        )
    if isinstance(p.accelerator_limit, bool) or not isinstance(p.accelerator_limit, int):
        raise _Invalid("accelerator_limit", f"expected an integer, got {p.accelerator_limit!r}")
    if p.accelerator_type and p.accelerator_limit < 1:
        raise _Invalid(
            "accelerator_limit",
            f"{p.accelerator_limit} with accelerator_type {p.accelerator_type!r}: use 1 or more",
        )
    if not p.accelerator_type and p.accelerator_limit != 0:
        raise _Invalid(
            "accelerator_limit",
            f"{p.accelerator_limit} without accelerator_type: set both or neither",
        )
    bad_roles = [r for r in p.gpu_roles if r not in ROLES]
    if bad_roles:
        raise _Invalid(
            "gpu_roles", f"unknown role {bad_roles[0]!r}; valid roles are {', '.join(ROLES)}"
        )
    for k, v in p.node_selector.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise _Invalid(f"node_selector.{k}", f"labels must map strings to strings, got {v!r}")
    for i, tol in enumerate(p.tolerations):
        _check_toleration(tol, f"tolerations[{i}]")
    missing = [r for r in RESOURCE_ROLES if r not in p.resources]
    if missing:
        raise _Invalid(f"resources.{missing[0]}", "missing")
    for role in RESOURCE_ROLES:
        _check_resources(p.resources[role], f"resources.{role}")
    _check_train_defaults(p.train_defaults)
    if isinstance(p.workers, bool) or not isinstance(p.workers, int) or p.workers < 1:
        raise _Invalid(
            "workers",
            f"{p.workers!r} must be an integer >= 1 (1 trains in the train task's pod, "
            ">= 2 launches a TFJob of that many worker pods)",
        )
    for role in ROLES:
        seconds = p.timeouts.get(role) if isinstance(p.timeouts, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise _Invalid(
                f"timeouts.{role}", f"{seconds!r} must be an integer number of seconds >= 1"
            )
    if not isinstance(p.security_context, bool):
        raise _Invalid("security_context", f"expected true or false, got {p.security_context!r}")
    ttl = p.tfjob_ttl_seconds
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise _Invalid("tfjob_ttl_seconds", f"{ttl!r} must be an integer number of seconds >= 0")


def _check_image(image: Any, key: str) -> None:
    _str(image, key)
    ref = image.rsplit("/", 1)[-1]
    if "@" not in ref and ":" not in ref:
        raise _Invalid(key, f"{image!r} has no tag: pin a version, never the implicit latest")
    if ref.endswith(":latest"):
        raise _Invalid(key, f"{image!r}: `latest` moves; pin a version so runs are reproducible")


def _check_train_defaults(defaults: Any) -> None:
    if not isinstance(defaults, dict):
        raise _Invalid("train_defaults", f"expected a mapping, got {defaults!r}")
    for key, value in defaults.items():
        where = f"train_defaults.{key}"
        if key not in TRAIN_DEFAULT_KEYS:
            raise _Invalid(where, f"unknown key; valid keys are {', '.join(TRAIN_DEFAULT_KEYS)}")
        tp = TRAIN_DEFAULT_KEYS[key]
        if type(value) is not tp:  # bool is an int subclass: compare types exactly
            raise _Invalid(where, f"expected {tp.__name__}, got {value!r}")
    if "precision" in defaults and defaults["precision"] not in PRECISIONS:
        raise _Invalid(
            "train_defaults.precision",
            f"{defaults['precision']!r} is not one of {', '.join(PRECISIONS)}",
        )
    if defaults.get("steps_per_call", 1) < 1:
        raise _Invalid(
            "train_defaults.steps_per_call", f"{defaults['steps_per_call']} must be >= 1"
        )


def _check_toleration(tol: dict[str, Any], where: str) -> None:
    operator = tol.get("operator", "Equal")  # the Kubernetes default
    if operator not in TOLERATION_OPERATORS:
        raise _Invalid(
            f"{where}.operator", f"{operator!r} is not one of {', '.join(TOLERATION_OPERATORS)}"
        )
    effect = tol.get("effect")
    if effect is not None and effect not in TOLERATION_EFFECTS:
        raise _Invalid(
            f"{where}.effect", f"{effect!r} is not one of {', '.join(TOLERATION_EFFECTS)}"
        )
    if operator == "Exists" and tol.get("value"):
        raise _Invalid(
            f"{where}.value", "must be empty with operator Exists (it matches any value)"
        )
    if not tol.get("key") and operator != "Exists":
        raise _Invalid(
            f"{where}.key", "an empty key tolerates every taint and needs operator Exists"
        )
    for k in ("key", "value"):
        if k in tol and not isinstance(tol[k], str):
            raise _Invalid(f"{where}.{k}", f"expected a string, got {tol[k]!r}")
    seconds = tol.get("toleration_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
        raise _Invalid(f"{where}.toleration_seconds", f"expected an integer, got {seconds!r}")


def _check_resources(r: Any, where: str) -> None:
    if not isinstance(r, RoleResources):
        raise _Invalid(where, f"expected RoleResources, got {r!r}")
    for f in ("cpu_request", "cpu_limit"):
        v = getattr(r, f)
        if not isinstance(v, str) or not _CPU_RE.match(v):
            raise _Invalid(
                f"{where}.{f}", f"{v!r} is not a CPU quantity such as '2', '0.5' or '500m'"
            )
    for f in ("memory_request", "memory_limit"):
        v = getattr(r, f)
        if not isinstance(v, str) or not _MEMORY_RE.match(v):
            raise _Invalid(
                f"{where}.{f}",
                f"{v!r} is not a memory quantity such as '512Mi' or '8Gi' (integers only)",
            )
    # Kubernetes rejects the pod if a request exceeds its limit; say so before submitting.
    if _cpu_millis(r.cpu_request) > _cpu_millis(r.cpu_limit):
        raise _Invalid(f"{where}.cpu_request", f"{r.cpu_request} is above cpu_limit {r.cpu_limit}")
    if _memory_bytes(r.memory_request) > _memory_bytes(r.memory_limit):
        raise _Invalid(
            f"{where}.memory_request", f"{r.memory_request} is above memory_limit {r.memory_limit}"
        )


def _cpu_millis(q: str) -> float:
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


def _memory_bytes(q: str) -> int:
    m = _MEMORY_RE.match(q)
    assert m is not None  # checked by the caller
    return int(m.group(1)) * _MEMORY_FACTORS[m.group(2)]
