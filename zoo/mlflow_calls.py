"""Bounded MLflow calls: each retries through an outage for GENPIPE_RETRY_SECONDS, then fails
with one line naming the endpoint; and MLflow's artifact repository at a known artifact URI.

Split out of zoo.tracking (which re-exports these names), so that zoo.runlog and
zoo.model_logging use them without importing zoo.tracking (which imports zoo.runlog).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import mlflow

from zoo.errors import ConfigError, GenpipeError

ENV_RETRY_SECONDS = "GENPIPE_RETRY_SECONDS"
#: MLflow's own per-request knobs (mlflow/environment_variables.py); we set them unless the
#: user did, so that MLflow's internal retries do not multiply with ours.
_MLFLOW_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_MLFLOW_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
#: MLflow prints "View run NAME at: URL" when a run ends, after reading the run only for that
#: (one more request per task that ends a run); `genpipe run` prints the run's URL itself.
_MLFLOW_QUIET_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
#: the MLflow knob values genpipe set, as NAME=value;... in the environment, so that a child
#: process (a pipeline task) tells them from a user's own (which are left alone)
_OURS = "GENPIPE_MLFLOW_HTTP_SET"
#: what MLflow's request-header providers try to import on EVERY request (to detect Databricks,
#: Spark, notebooks); absent here, each failed import re-scans sys.path: ~2 ms per request.
_CONTEXT_PROBES = ("dbruntime", "pyspark", "IPython")


def retry_seconds() -> float:
    """GENPIPE_RETRY_SECONDS (default 120): how long an operation retries through an outage."""
    raw = os.environ.get(ENV_RETRY_SECONDS, "120")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{ENV_RETRY_SECONDS}={raw!r} must be a positive number of seconds")
    return value


def _set_knob(name: str, value: str) -> None:
    ours = dict(kv.split("=", 1) for kv in os.environ.get(_OURS, "").split(";") if "=" in kv)
    if name in os.environ and os.environ[name] != ours.get(name):
        return  # set by the user: theirs
    os.environ[name] = ours[name] = value
    os.environ[_OURS] = ";".join(f"{k}={v}" for k, v in sorted(ours.items()))


def skip_absent_context_probes() -> None:
    """Remember, for this process, that MLflow's per-request context probes are not installed
    (`None` in sys.modules: `import` fails at once, with the same ModuleNotFoundError). Ones
    that are installed, or already imported, are left alone."""
    import importlib.util

    for name in _CONTEXT_PROBES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]


def _bound_mlflow_http(budget: float) -> None:
    """One HTTP attempt per MLflow call, with a timeout well inside the budget.

    MLflow's defaults (120 s read timeout, 7 retries with backoff) keep a call to a stalled
    server busy for ~15 min; our own loop (`call`) retries instead, for `budget` seconds.
    """
    _set_knob(_MLFLOW_RETRIES, "0")
    _set_knob(_MLFLOW_TIMEOUT, str(max(1, min(30, int(budget / 4)))))


def retrying(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`call` for MLflow's fluent and artifact APIs (which bypass `BoundedClient`) against the
    current tracking URI: `client()` turned MLflow's own retries off."""
    return call(mlflow.get_tracking_uri(), what, fn, *args, **kwargs)


def _transient_cause(e: BaseException) -> str | None:
    """A short reason when `e` is an outage (connection refused, timeout, 5xx), else None."""
    import requests

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, GenpipeError):  # already a verdict (e.g. a nested call gave up)
            return None
        if isinstance(cur, (requests.exceptions.Timeout, TimeoutError)):
            return f"no response within {os.environ.get(_MLFLOW_TIMEOUT, '120')} s"
        if isinstance(cur, requests.exceptions.RetryError):
            m = re.search(r"too many (\d+) error responses", str(cur))
            return f"HTTP {m[1]}" if m else "server error"
        if isinstance(cur, (requests.exceptions.ConnectionError, ConnectionError)):
            text = str(cur)
            if "refused" in text.lower():
                return "connection refused"
            if "timed out" in text.lower():
                return f"no response within {os.environ.get(_MLFLOW_TIMEOUT, '120')} s"
            return "connection failed"
        cur = cur.__cause__ or cur.__context__
    return None


def call(
    uri: str,
    what: str,
    fn: Callable[..., Any],
    *args: Any,
    budget: float | None = None,
    **kwargs: Any,
) -> Any:
    """Run one MLflow call, retrying outages with backoff for GENPIPE_RETRY_SECONDS.

    The first failed attempt prints one line to stderr saying what is waited on (a task's
    stderr reaches `genpipe run`'s screen); when the budget is spent, one GenpipeError names
    the endpoint. Errors that are not outages (bad request, not found) are raised at once.
    """
    budget = retry_seconds() if budget is None else budget
    t0 = time.monotonic()
    delay = 0.5
    announced = False
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            cause = _transient_cause(e)
            if cause is None:
                raise
            waited = time.monotonic() - t0
            if waited + delay > budget:
                raise GenpipeError(
                    f"MLflow at {uri} unreachable during {what} (retried for {budget:g} s): {cause}"
                ) from None
            if not announced:
                print(
                    f"waiting for MLflow at {uri}: {cause} (retrying for up to {budget:g} s)",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        if announced:
            print(
                f"MLflow at {uri} is back after {time.monotonic() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        return result


def artifact_repo(artifact_uri: str, tracking_uri: str | None = None) -> Any:
    """MLflow's artifact repository at `artifact_uri` (a run's or a LoggedModel's artifact
    location, as the caller read it): uploads and downloads there without MLflow reading the
    run again to find it, as MlflowClient.log_artifact does once per run and process.
    `tracking_uri`: the server behind an mlflow-artifacts: URI (default: the current one)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(
        artifact_uri, tracking_uri=tracking_uri or mlflow.get_tracking_uri()
    )


def log_artifact_at(
    artifact_uri: str, local_path: str, path: str | None = None, tracking_uri: str | None = None
) -> None:
    """Upload one file under `path` at `artifact_uri` (`artifact_repo`), retried through
    outages (`call`)."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    repo = artifact_repo(artifact_uri, uri)
    call(uri, f"uploading {os.path.basename(local_path)}", repo.log_artifact, local_path, path)
