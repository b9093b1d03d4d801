"""Cluster profiles: where and with what each pipeline step (role) runs.

A `Profile` is a typed config read with the same machinery as model configs
(`zoo.config.from_dict`, strict mode): choices are `Literal`s, per-role settings are
`dict[Role, ...]`, tolerations and train defaults are `TypedDict` records. Profiles come from
`pipelines/profiles.yaml` (by name) or a user YAML file (by path, optionally `extends:` a
built-in one). Every bad value raises one ConfigError line naming the file, the key path, the
value and what is valid. `pipelines.platform` applies a profile to KFP tasks and TFJobs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

import zoo
from zoo.config import FieldError, Precision, check_types, from_dict, overlay, yaml_mapping
from zoo.errors import ConfigError
from zoo.refs import pin_problem

#: The pipeline's steps. `finalize`: the exit task (components/finalize.py), which ends an
#: MLflow run that a task killed outright left RUNNING; small, CPU only.
Role = Literal["ingest", "train", "evaluate", "register", "finalize"]
ROLES: tuple[str, ...] = get_args(Role)
#: `launcher`: the train task of a multi-worker pipeline, which only creates the TFJob and
#: waits (no GPU, small); its resources are configured like a role's.
LAUNCHER = "launcher"
ResourceRole = Literal["ingest", "train", "evaluate", "register", "finalize", "launcher"]
RESOURCE_ROLES: tuple[str, ...] = get_args(ResourceRole)
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
IMAGE_PULL_POLICIES: tuple[str, ...] = get_args(PullPolicy)
_BUILTIN_FILE = "profiles.yaml"

# The same patterns kfp 2.17 checks in PipelineTask.set_cpu_*/set_memory_* (it raises a bare
# ValueError at pipeline build time); checking at load time lets the error name file and key.
_CPU_RE = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY_RE = re.compile(r"^([0-9]+)(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_MEMORY_FACTORS = {
    None: 1,
    **{s: 1000**i for i, s in enumerate(("K", "M", "G", "T", "P", "E"), start=1)},
    **{s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


def _memory_bytes(q: str) -> int:
    m = _MEMORY_RE.match(q)
    assert m is not None  # checked first
    return int(m.group(1)) * _MEMORY_FACTORS[m.group(2)]


#: per kind: what a quantity is, its pattern, its size (to compare request and limit)
_QUANTITIES: dict[str, tuple[str, re.Pattern[str], Callable[[str], float]]] = {
    "cpu": (
        "a CPU quantity such as '2', '0.5' or '500m'",
        _CPU_RE,
        lambda q: float(q[:-1]) if q.endswith("m") else float(q) * 1000,
    ),
    "memory": (
        "a memory quantity such as '512Mi' or '8Gi' (integers only)",
        _MEMORY_RE,
        _memory_bytes,
    ),
}


class Toleration(TypedDict, total=False):
    """One taint a GPU role tolerates (a plain dict; keys given as null are dropped)."""

    key: str | None
    operator: Literal["Exists", "Equal"] | None
    value: str | None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None
    toleration_seconds: int | None


class TrainDefaults(TypedDict, total=False):
    """Training settings a profile may default (the hardware decides them; a run's own
    overrides win): these fields of zoo.models.base.TrainConfig, with the same types."""

    precision: Precision
    steps_per_call: int
    jit_compile: bool


@dataclass
class RoleResources:
    """CPU and memory requests/limits of one role, as Kubernetes quantity strings."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def validate(self) -> None:
        for kind, (what, pattern, _size) in _QUANTITIES.items():
            for f in (f"{kind}_request", f"{kind}_limit"):
                if not pattern.match(getattr(self, f)):
                    raise FieldError(f, f"{getattr(self, f)!r} is not {what}")
            # Kubernetes rejects the pod if a request exceeds its limit; say so before submitting.
            request, limit = getattr(self, f"{kind}_request"), getattr(self, f"{kind}_limit")
            if _size(request) > _size(limit):
                raise FieldError(f"{kind}_request", f"{request} is above {kind}_limit {limit}")


def default_resources() -> dict[str, RoleResources]:
    """Per-role resources from the `defaults` block of the built-in profiles.yaml."""
    raw = _builtin_document()["defaults"]["resources"]
    return {role: RoleResources(**raw[role]) for role in RESOURCE_ROLES}


def default_timeouts() -> dict[str, int]:
    """Per-role timeouts (seconds) from the `defaults` block of the built-in profiles.yaml."""
    return dict(_builtin_document()["defaults"]["timeouts"])


@dataclass
class Profile:
    """Where and with what each pipeline role runs on a cluster.

    Checked on construction (ConfigError naming the field), also when built in code or by
    `dataclasses.replace`, so a Profile that exists can be applied without kfp raising halfway
    through building a pipeline.
    """

    name: str
    description: str
    image: str
    accelerator_type: str | None = None
    accelerator_limit: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    gpu_roles: tuple[Role, ...] = ("train", "evaluate")
    resources: dict[ResourceRole, RoleResources] = field(default_factory=default_resources)
    image_pull_policy: PullPolicy = "IfNotPresent"
    # Config defaults for the train step on this hardware, e.g. {precision: mixed_float16}.
    train_defaults: TrainDefaults = field(default_factory=TrainDefaults)
    # Image of the roles outside gpu_roles; None: the image's `-gpu` tag as `-cpu`.
    cpu_image: str | None = None
    # TFJob worker pods that train (>= 2: the train task launches a TFJob and waits).
    workers: int = 1
    # activeDeadlineSeconds per role: a hung step fails instead of holding its node forever.
    timeouts: dict[Role, int] = field(default_factory=default_timeouts)
    # How long a finished TFJob (and its pods' logs) stays before the operator deletes it.
    tfjob_ttl_seconds: int = 3600
    # Pipeline pods run as uid/gid 10001, non-root (kfp-kubernetes set_security_context).
    # False only for KFP backends older than that field, whose driver refuses unknown fields.
    security_context: bool = True

    def __post_init__(self) -> None:
        for key in ("image", "cpu_image"):
            if isinstance(getattr(self, key), str):
                setattr(self, key, getattr(self, key).replace("{version}", zoo.__version__))
        owner = f"profile {self.name!r}"
        check_types(self, owner)
        try:
            self._check_values()
        except FieldError as e:
            raise FieldError(e.key, e.message, owner) from None

    def _check_values(self) -> None:
        """Raise FieldError for the first value its type alone does not rule out."""
        if not self.name:
            raise FieldError("name", "must not be empty")
        for key in ("image", "cpu_image"):
            image = getattr(self, key)
            if image is None:
                continue
            if "{" in image or "}" in image:
                raise FieldError(key, f"{image!r}: the only placeholder is {{version}}")
            if pin_problem(image):
                raise FieldError(key, pin_problem(image))
        if self.accelerator_type and self.accelerator_limit < 1:
            raise FieldError(
                "accelerator_limit",
                f"{self.accelerator_limit} with accelerator_type {self.accelerator_type!r}: "
                "use 1 or more",
            )
        if not self.accelerator_type and self.accelerator_limit != 0:
            raise FieldError(
                "accelerator_limit",
                f"{self.accelerator_limit} without accelerator_type: set both or neither",
            )
        for i, tol in enumerate(self.tolerations):
            _check_toleration(tol, f"tolerations[{i}]")
        for role in RESOURCE_ROLES:
            if role not in self.resources:
                raise FieldError(f"resources.{role}", "missing")
            try:
                self.resources[role].validate()  # type: ignore[index]
            except FieldError as e:
                raise FieldError(f"resources.{role}.{e.key}", e.message) from None
        if self.train_defaults.get("steps_per_call", 1) < 1:
            raise FieldError(
                "train_defaults.steps_per_call",
                f"{self.train_defaults['steps_per_call']} must be >= 1",
            )
        if self.workers < 1:
            raise FieldError(
                "workers",
                f"{self.workers!r} must be an integer >= 1 (1 trains in the train task's pod, "
                ">= 2 launches a TFJob of that many worker pods)",
            )
        for role in ROLES:
            seconds = self.timeouts.get(role)  # type: ignore[call-overload]
            if seconds is None or seconds < 1:
                raise FieldError(
                    f"timeouts.{role}", f"{seconds!r} must be an integer number of seconds >= 1"
                )
        if self.tfjob_ttl_seconds < 0:
            raise FieldError(
                "tfjob_ttl_seconds",
                f"{self.tfjob_ttl_seconds!r} must be an integer number of seconds >= 0",
            )

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


def _check_toleration(tol: Toleration, where: str) -> None:
    operator = tol.get("operator", "Equal")  # the Kubernetes default
    if operator == "Exists" and tol.get("value"):
        raise FieldError(
            f"{where}.value", "must be empty with operator Exists (it matches any value)"
        )
    if not tol.get("key") and operator != "Exists":
        raise FieldError(
            f"{where}.key", "an empty key tolerates every taint and needs operator Exists"
        )


def cpu_variant(image: str) -> str:
    """The CPU twin of a genpipe image: tag `X-gpu` -> `X-cpu`; other images unchanged."""
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag and "@" not in image and tag.endswith("-gpu"):
        return f"{repo}:{tag[: -len('gpu')]}cpu"
    return image


# --- loading ----------------------------------------------------------------------------------


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


def _builtin_path() -> str:
    return str(importlib_resources.files("pipelines").joinpath(_BUILTIN_FILE))


@functools.lru_cache(maxsize=1)
def _builtin_document_cached() -> dict[str, Any]:
    text = importlib_resources.files("pipelines").joinpath(_BUILTIN_FILE).read_text("utf-8")
    doc = yaml_mapping(text, _builtin_path(), "profile keys")
    for key in ("defaults", "profiles"):
        if not isinstance(doc.get(key), dict):
            raise ConfigError(f"{_builtin_path()}: {key}: missing or not a mapping")
    return doc


def _builtin_document() -> dict[str, Any]:
    # A deep copy, so nothing a caller does to a loaded profile can change the cached file.
    return copy.deepcopy(_builtin_document_cached())


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
    doc = yaml_mapping(text, file, "profile keys")
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
    name = doc.pop("name", name)  # checked with the other keys
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
    """`raw` over `base` (a built-in profile) over the defaults, as a Profile; errors name
    file and key. Keys replace whole values, but `resources` and `timeouts` merge per role
    (and field), so a file names only what it changes."""
    defaults = _builtin_document()["defaults"]
    layers = [defaults, base or {}, raw]
    merged: dict[str, Any] = {"description": "", **{k: v for ly in layers for k, v in ly.items()}}
    if "image" not in merged:
        raise ConfigError(
            f"{file}: {prefix}image: missing (e.g. ghcr.io/genpipe/genpipe:{{version}}-cpu)"
        )
    for key in ("resources", "timeouts"):
        merged[key] = overlay(*(layer.get(key) for layer in layers if layer.get(key) is not None))
    doc = {**_yaml_scalars(merged), "name": name}
    return from_dict(Profile, doc, file, strict=True, path=prefix)


def _yaml_scalars(doc: dict[str, Any]) -> dict[str, Any]:
    """What plain YAML writes for a Kubernetes string: `cpu_limit: 2` is an int and
    `gpu: true` a bool, but quantities and label values are strings; an empty key is none."""
    out = dict(doc)
    if isinstance(out.get("resources"), dict):
        out["resources"] = {
            role: {f: _scalar_str(v, numbers=True) for f, v in fields.items()}
            if isinstance(fields, dict)
            else fields
            for role, fields in out["resources"].items()
        }
    if isinstance(out.get("node_selector"), dict):
        out["node_selector"] = {k: _scalar_str(v) for k, v in out["node_selector"].items()}
    for key, empty in (("node_selector", {}), ("tolerations", []), ("train_defaults", {})):
        if out.get(key) is None:
            out[key] = empty
    if out.get("accelerator_type") == "":
        out["accelerator_type"] = None
    return out


def _scalar_str(value: Any, numbers: bool = False) -> Any:
    if isinstance(value, bool):
        return value if numbers else ("true" if value else "false")
    if isinstance(value, int) or (numbers and isinstance(value, float)):
        return str(value)
    return value
