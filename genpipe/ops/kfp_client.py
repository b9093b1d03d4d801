"""Talking to a Kubeflow Pipelines API server (v2beta1) through the real `kfp.Client`.

How to authenticate and where the server is: `genpipe.ops.kfp_auth`; the cron or interval of
a recurring run: `genpipe.ops.kfp_schedule`.

Pipelines are uploaded once per content: the version is named by the SHA-256 of the compiled
YAML, so submitting an unchanged pipeline reuses the existing version. Recurring runs cannot
be edited in place, so (re)scheduling a name creates the new recurring run first and only then
deletes the older ones with that display name: a schedule the server refuses leaves the old
one running.

In multi-user Kubeflow the API server authorizes every call with SubjectAccessReviews on
`pipelines.kubeflow.org` resources; `KFP_RBAC` lists, per method here, the (resource, verb)
pairs it checks, and the Role `genpipe-kfp-submitter` (k8s/pipeline-namespace/rbac.yaml) grants
exactly their union.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from genpipe.ops.kfp_auth import KfpAuth
from zoo.errors import ConfigError, GenpipeError

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")

# The (resource, verb) pairs on API group pipelines.kubeflow.org that KFP's API server checks
# (one SubjectAccessReview each) in multi-user mode for each method of `Kfp` below. Sources,
# kubeflow/pipelines backend/src/apiserver: resource and verb names from common/const.go
# (RbacResourceType*, RbacResourceVerb*); server/pipeline_server.go ListPipelines -> list,
# ListPipelineVersions -> list (on `pipelines`: a version has no resource of its own, so
# `pipelines/versions` is never checked), DeletePipelineVersion -> delete;
# server/pipeline_upload_server.go UploadPipeline and UploadPipelineVersion -> create;
# server/experiment_server.go ListExperiments -> list, CreateExperiment -> create (kfp's
# create_experiment looks the name up with a list first); server/run_server.go CreateRun ->
# create on `runs` plus `get` on the referenced pipeline (canAccessReferencedPipeline), GetRun
# -> get; server/job_server.go (recurring runs are `jobs`) ListRecurringRuns -> list,
# CreateRecurringRun -> create plus `get` on the referenced pipeline, DeleteRecurringRun ->
# delete, DisableRecurringRun -> disable, EnableRecurringRun -> enable. Reads of a pipeline
# without a namespace (a shared one) are not checked. The delete of KFP's default version and
# the `get` on a referenced pipeline name the pipeline (`genpipe-MODEL`).
KFP_RBAC: dict[str, frozenset[tuple[str, str]]] = {
    "ensure_pipeline_version": frozenset(
        {("pipelines", "list"), ("pipelines", "create"), ("pipelines", "delete")}
    ),
    "experiment_id": frozenset({("experiments", "list"), ("experiments", "create")}),
    "create_run": frozenset({("runs", "create"), ("pipelines", "get")}),
    "wait": frozenset({("runs", "get")}),
    "recurring_runs": frozenset({("jobs", "list")}),
    "schedule": frozenset(
        {("jobs", "list"), ("jobs", "create"), ("jobs", "delete"), ("pipelines", "get")}
    ),
    "pause": frozenset({("jobs", "list"), ("jobs", "disable")}),
    "resume": frozenset({("jobs", "list"), ("jobs", "enable")}),
    "delete": frozenset({("jobs", "list"), ("jobs", "delete")}),
}
# The Kfp methods each CLI command calls (`submit --wait` adds `wait`).
COMMAND_CALLS: dict[str, tuple[str, ...]] = {
    "submit": ("ensure_pipeline_version", "experiment_id", "create_run", "wait"),
    "schedule": ("ensure_pipeline_version", "experiment_id", "schedule"),
    "schedules list": ("recurring_runs",),
    "schedules pause": ("pause",),
    "schedules resume": ("resume",),
    "schedules delete": ("delete",),
}


def kfp_rbac_needs(commands: tuple[str, ...] = tuple(COMMAND_CALLS)) -> set[tuple[str, str]]:
    """Every (resource, verb) pair the given CLI commands need from KFP's authorizer."""
    return {pair for c in commands for m in COMMAND_CALLS[c] for pair in KFP_RBAC[m]}


class KfpError(GenpipeError):
    """The KFP API server refused a request or cannot be reached."""


def content_version_name(package: Path) -> str:
    """Pipeline version name from the compiled YAML's content (identical YAML, same name)."""
    return "sha256-" + hashlib.sha256(Path(package).read_bytes()).hexdigest()[:16]


def pipeline_name_of(package: Path) -> str:
    # The pipeline spec, then (with Kubernetes settings) a platform spec document.
    doc = next(yaml.safe_load_all(Path(package).read_text("utf-8")))
    return doc["pipelineInfo"]["name"]


@contextlib.contextmanager
def _api(what: str) -> Iterator[None]:
    """Turn kfp_server_api / urllib3 failures into one-line KfpErrors."""
    import kfp_server_api
    import urllib3

    try:
        # kfp prints "Run details: <link>" to stdout; callers print their own summary.
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except kfp_server_api.ApiException as e:
        detail = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(e.body)
            # google.rpc.Status: details[].error_message is KFP's message for users, `message`
            # the internal chain; the upload endpoints answer {"error_message", ...}.
            details = [d.get("error_message") for d in body.get("details") or []]
            detail = next((d for d in details if d), "") or body.get("error_message") or ""
            detail = detail or body.get("message") or body.get("error") or ""
        if not detail and isinstance(e.body, str):
            detail = e.body.strip()[:300]
        detail = " ".join(str(detail).split())  # one line
        hint = " (check --token/--cookie)" if e.status in (401, 403) else ""
        raise KfpError(f"KFP {what} failed: HTTP {e.status} {e.reason}{hint}: {detail}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KfpError(f"KFP {what} failed: cannot reach the API server: {e}") from None


class Kfp:
    """The few KFP operations genpipe needs, on a real `kfp.Client`."""

    def __init__(self, host: str, auth: KfpAuth, namespace: str = "") -> None:
        import kfp

        self.host = host
        self.namespace = namespace or None
        kwargs: dict[str, Any] = {"host": host}
        if auth.token:
            kwargs["existing_token"] = auth.token
        elif auth.cookie:
            kwargs["cookies"] = auth.cookie
        elif auth.token_path:
            from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=auth.token_path)
        if namespace:
            # kfp only skips its multi-user probe (and ~/.config/kfp/context.json) when told.
            kwargs["namespace"] = namespace
        with _api("connect"), warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": noise.
            warnings.simplefilter("ignore", FutureWarning)
            self.client = kfp.Client(**kwargs)

    # --- pipelines ------------------------------------------------------------------------

    def _find_pipeline(self, name: str) -> str | None:
        flt = json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
        )
        with _api("list pipelines"):
            res = self.client.list_pipelines(filter=flt, page_size=100, namespace=self.namespace)
        matches = [p for p in res.pipelines or [] if p.display_name == name]
        return matches[0].pipeline_id if matches else None

    def _find_version(self, pipeline_id: str, version_name: str) -> str | None:
        flt = json.dumps(
            {
                "predicates": [
                    {"operation": "EQUALS", "key": "display_name", "stringValue": version_name}
                ]
            }
        )
        with _api("list pipeline versions"):
            res = self.client.list_pipeline_versions(pipeline_id, filter=flt, page_size=100)
        matches = [v for v in res.pipeline_versions or [] if v.display_name == version_name]
        return matches[0].pipeline_version_id if matches else None

    def ensure_pipeline_version(self, package: Path) -> tuple[str, str, str, bool]:
        """(pipeline_id, version_id, version_name, uploaded) for a compiled package."""
        name = pipeline_name_of(package)
        version_name = content_version_name(package)
        pipeline_id = self._find_pipeline(name)
        created = pipeline_id is None
        if pipeline_id is None:
            with _api("upload pipeline"):
                pipeline_id = self.client.upload_pipeline(
                    str(package),
                    pipeline_name=name,
                    description="genpipe pipeline; versions are named by content hash",
                    namespace=self.namespace,
                ).pipeline_id
        else:
            existing = self._find_version(pipeline_id, version_name)
            if existing:
                return pipeline_id, existing, version_name, False
        # A new pipeline gets a default version named after the pipeline; the hash-named
        # version is uploaded so later submits find it by content, then the default one (the
        # same content) is deleted so the pipeline lists each content once.
        try:
            with _api("upload pipeline version"):
                version = self.client.upload_pipeline_version(
                    str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
                )
        except KfpError:
            # Another submit may have uploaded the same content since our lookup: use it.
            existing = self._find_version(pipeline_id, version_name)
            if existing:
                return pipeline_id, existing, version_name, False
            raise
        if created:
            default = self._find_version(pipeline_id, name)
            if default and default != version.pipeline_version_id:
                with _api("delete the default pipeline version"):
                    self.client.delete_pipeline_version(pipeline_id, default)
        return pipeline_id, version.pipeline_version_id, version_name, True

    # --- experiments and runs -----------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        with _api("get/create experiment"):
            return self.client.create_experiment(name, namespace=self.namespace).experiment_id

    def create_run(
        self,
        experiment_id: str,
        run_name: str,
        pipeline_id: str,
        version_id: str,
        params: dict[str, Any],
        service_account: str = "",
    ) -> str:
        with _api("create run"):
            run = self.client.run_pipeline(
                experiment_id=experiment_id,
                job_name=run_name,
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
                service_account=service_account or None,
            )
        return run.run_id

    def run_url(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"

    def wait(
        self,
        run_id: str,
        on_change: Callable[[str, dict[str, str]], None],
        timeout: float = 24 * 3600,
        poll: float = 5.0,
    ) -> str:
        """Poll the run until a final state; report run and task state changes; return it."""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            with _api("get run"):
                run = self.client.get_run(run_id)
            tasks = {}
            for t in getattr(run.run_details, "task_details", None) or []:
                if t.display_name and t.state:
                    tasks[t.display_name] = str(t.state)
            state = str(run.state or "PENDING")
            if seen.get("") != state or any(seen.get(k) != v for k, v in tasks.items()):
                on_change(state, tasks)
                seen = {"": state, **tasks}
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise KfpError(f"run {run_id} still {state} after {timeout:.0f}s")
            time.sleep(poll)

    # --- recurring runs -----------------------------------------------------------------

    def recurring_runs(self) -> list[Any]:
        """All recurring runs (every page) visible in the namespace."""
        out: list[Any] = []
        token = ""
        while True:
            with _api("list recurring runs"):
                res = self.client.list_recurring_runs(
                    page_token=token, page_size=100, namespace=self.namespace
                )
            out.extend(res.recurring_runs or [])
            token = res.next_page_token or ""
            if not token:
                return out

    def recurring_runs_named(self, name: str) -> list[Any]:
        # Filtered here, not with a server-side filter, so it works on every KFP version.
        return [r for r in self.recurring_runs() if r.display_name == name]

    def schedule(
        self,
        name: str,
        experiment_id: str,
        pipeline_id: str,
        version_id: str,
        params: dict[str, Any],
        cron: str = "",
        every_seconds: int = 0,
        service_account: str = "",
    ) -> tuple[str, int]:
        """Create recurring run `name`, then delete the older ones with that name (so a
        schedule the server refuses leaves the old one in place); (id, replaced count)."""
        if bool(cron) == bool(every_seconds):
            raise ConfigError("give exactly one of --cron or --every")
        old = self.recurring_runs_named(name)
        with _api("create recurring run"):
            created = self.client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=name,
                description="genpipe scheduled retraining",
                cron_expression=cron or None,
                interval_second=every_seconds or None,
                max_concurrency=1,
                # A paused schedule resumed later runs once, not once per missed interval.
                no_catchup=True,
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
                enabled=True,
                service_account=service_account or None,
            )
        new_id = created.recurring_run_id
        for r in old:
            if r.recurring_run_id == new_id:
                continue
            try:
                with _api(f"delete recurring run {r.recurring_run_id}"):
                    self.client.delete_recurring_run(r.recurring_run_id)
            except KfpError as e:
                # Both schedules exist now: say so, rather than leave a silent duplicate.
                raise KfpError(
                    f"created recurring run {name!r} ({new_id}), but the previous one "
                    f"{r.recurring_run_id} is still scheduled: {e}; delete it with "
                    f"`genpipe schedules delete` once it is gone from `genpipe schedules list`"
                ) from None
        return new_id, len(old)

    def _ids(self, name: str) -> list[str]:
        runs = self.recurring_runs_named(name)
        if not runs:
            names = sorted({r.display_name for r in self.recurring_runs()})
            raise ConfigError(
                f"no recurring run named {name!r}; existing: {', '.join(names) or 'none'}"
            )
        return [r.recurring_run_id for r in runs]

    def pause(self, name: str) -> int:
        ids = self._ids(name)
        for i in ids:
            with _api("disable recurring run"):
                self.client.disable_recurring_run(i)
        return len(ids)

    def resume(self, name: str) -> int:
        ids = self._ids(name)
        for i in ids:
            with _api("enable recurring run"):
                self.client.enable_recurring_run(i)
        return len(ids)

    def delete(self, name: str) -> int:
        ids = self._ids(name)
        for i in ids:
            with _api("delete recurring run"):
                self.client.delete_recurring_run(i)
        return len(ids)
