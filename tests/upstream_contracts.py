"""Check custom resources against the upstream CRDs in ../shared/specs (not our idea of them).

The CRD files are verbatim copies of KServe's and the Training Operator's published definitions
(see ../shared/specs/README.md). `crd_errors(obj)` validates one object the way the API server
does with `kubectl apply` (strict field validation, kubectl's default since 1.27): the version
must be served, every field must be declared by the version's structural openAPIV3Schema unless
`x-kubernetes-preserve-unknown-fields` allows it, and types, enums, patterns, bounds, required
fields and list uniqueness (`x-kubernetes-list-type: set|map`) must hold. CEL rules
(`x-kubernetes-validations`) compare an object with its previous version (immutability) and do
not apply to a create, so they are not evaluated.

Tests import it as `import upstream_contracts` (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT.parent / "shared" / "specs"
CRD_FILES = (
    "kserve-inferenceservices.crd.yaml",
    "kserve-servingruntimes.crd.yaml",
    "kubeflow-tfjobs.crd.yaml",
)

# ObjectMeta fields a client may set (k8s.io/apimachinery/pkg/apis/meta/v1 ObjectMeta); the
# rest (uid, resourceVersion, ...) are server-set and refused here as a sign of a bad manifest.
_META_FIELDS = {
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
}
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_INT_FORMATS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD document, for every CRD file in the specs folder."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name in CRD_FILES:
        for doc in yaml.safe_load_all((SPECS / name).read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return out


def schema_for(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of a served version; KeyError names what is missing."""
    group, _, version = api_version.rpartition("/")
    crd = _crds().get((group, kind))
    if crd is None:
        raise KeyError(f"no CRD for {kind} in group {group!r} in {SPECS}")
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served", False):
            return v["schema"]["openAPIV3Schema"]
    served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
    raise KeyError(f"{kind} version {version!r} is not served (served: {served})")


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Every contract violation of one custom resource, as 'path: problem' lines."""
    if not isinstance(obj, dict):
        return [f"<root>: expected an object, got {type(obj).__name__}"]
    try:
        schema = schema_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    except KeyError as e:
        return [f"<root>: {e.args[0]}"]
    errors: list[str] = []
    _check_metadata(obj.get("metadata"), errors)
    rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    props = {k: s for k, s in schema.get("properties", {}).items() if k != "metadata"}
    _check(rest, {**schema, "properties": props, "required": _required(schema)}, "", errors)
    return errors


def assert_valid(obj: dict[str, Any]) -> None:
    """Fail with every violation listed."""
    errors = crd_errors(obj)
    assert not errors, f"{obj.get('kind')} violates its upstream CRD:\n" + "\n".join(errors)


def _required(schema: dict[str, Any]) -> list[str]:
    return [r for r in schema.get("required", []) if r not in ("apiVersion", "kind", "metadata")]


def _check_metadata(meta: Any, errors: list[str]) -> None:
    if not isinstance(meta, dict):
        errors.append("metadata: required object")
        return
    for key in sorted(set(meta) - _META_FIELDS):
        errors.append(f"metadata.{key}: unknown or server-set field")
    name = meta.get("name")
    if name is None and not meta.get("generateName"):
        errors.append("metadata.name: required")
    elif name is not None and (
        not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name)
    ):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns)):
        errors.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        values = meta.get(field, {})
        if not isinstance(values, dict):
            errors.append(f"metadata.{field}: expected a map of strings")
            continue
        for k, v in values.items():
            if not isinstance(v, str):
                errors.append(f"metadata.{field}.{k}: value {v!r} is not a string")
            prefix, _, key = str(k).rpartition("/")
            bad_key = len(key) > 63 or not _LABEL_NAME.match(key)
            if bad_key or (prefix and not _DNS1123_SUBDOMAIN.match(prefix)):
                errors.append(f"metadata.{field}: key {k!r} is not a qualified name")
            if (
                field == "labels"
                and isinstance(v, str)
                and v
                and (len(v) > 63 or not _LABEL_NAME.match(v))
            ):
                errors.append(f"metadata.labels.{k}: value {v!r} is not a valid label value")


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    if value is None:
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    t = schema.get("type")
    if t is None:
        return True
    return {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }[t](value)


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    where = path or "<root>"
    if not _type_ok(value, schema):
        want = "int-or-string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        errors.append(f"{where}: expected {want}, got {type(value).__name__} {value!r:.60}")
        return
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get(
            "minLength", 0
        ):
            errors.append(f"{where}: length {len(value)} out of bounds")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = _INT_FORMATS.get(schema.get("format", ""), (None, None))
        lo = schema.get("minimum", lo)
        hi = schema.get("maximum", hi)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            errors.append(f"{where}: {value} out of range [{lo}, {hi}]")
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)


def _check_object(value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[str]):
    for req in schema.get("required", []):
        if req not in value:
            errors.append(f"{path + '.' if path else ''}{req}: required field missing")
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        sub = f"{path}.{key}" if path else key
        if props is not None and key in props:
            _check(item, props[key], sub, errors)
        elif isinstance(extra, dict):
            _check(item, extra, sub, errors)
        elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            continue
        else:
            errors.append(f"{sub}: unknown field")


def _check_array(value: list[Any], schema: dict[str, Any], path: str, errors: list[str]):
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
        errors.append(f"{path}: {len(value)} items out of bounds")
    for i, item in enumerate(value):
        _check(item, schema.get("items", {}), f"{path}[{i}]", errors)
    kind = schema.get("x-kubernetes-list-type")
    if kind == "set":
        seen = [repr(v) for v in value]
        if len(set(seen)) != len(seen):
            errors.append(f"{path}: duplicate items in a set")
    elif kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        ids = [tuple(repr(v.get(k)) for k in keys) for v in value if isinstance(v, dict)]
        if len(set(ids)) != len(ids):
            errors.append(f"{path}: duplicate entries for map keys {keys}")
