"""MLflow tracking helpers: one MLflow run per pipeline run, found again on retries.

Every component of one pipeline run logs into the same MLflow run, found by the tag
`genpipe.pipeline_run_id`, so a retried component (KFP re-runs it from scratch) appends to
that run instead of creating a duplicate.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from zoo import names
from zoo.errors import ConfigError, GenpipeError
from zoo.runlog import RunLogger, _flatten  # noqa: F401 - their home was here
from zoo.settings import Settings

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


def _bound_mlflow_http(budget: float) -> None:
    """One HTTP attempt per MLflow call, with a timeout well inside the budget.

    MLflow's defaults (120 s read timeout, 7 retries with backoff) keep a call to a stalled
    server busy for ~15 min; our own loop (`call`) retries instead, for `budget` seconds.
    """
    _set_knob(_MLFLOW_RETRIES, "0")
    _set_knob(_MLFLOW_TIMEOUT, str(max(1, min(30, int(budget / 4)))))


def client(settings: Settings | None = None) -> MlflowClient:
    """An MLflow client for the configured tracking server (sets the global URI too).

    Every call through it retries connection errors, timeouts and transient HTTP errors for
    GENPIPE_RETRY_SECONDS, printing one line to stderr when it starts waiting, then fails with
    one GenpipeError naming the endpoint (see `call`).
    """
    settings = settings or Settings.from_env()
    _bound_mlflow_http(retry_seconds())
    _set_knob(_MLFLOW_QUIET_URL, "true")
    mlflow.set_tracking_uri(settings.mlflow_uri)
    return BoundedClient(settings.mlflow_uri)


class BoundedClient(MlflowClient):
    """MlflowClient whose public methods run through `call` (bounded retries, one-line errors)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self._genpipe_uri = uri

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr) or isinstance(attr, type):
            return attr
        uri = super().__getattribute__("_genpipe_uri")

        def bounded(*args: Any, **kwargs: Any) -> Any:
            return call(uri, name, attr, *args, **kwargs)

        return bounded

    def log_artifact_at(self, artifact_uri: str, local_path: str, path: str | None = None) -> None:
        """`log_artifact` into a run whose artifact URI the caller knows (its run as read):
        MlflowClient.log_artifact reads the run first, once per run and process."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(artifact_uri, tracking_uri=self._genpipe_uri)
        repo.log_artifact(local_path, path)

    def registry(self) -> Any:
        """MLflow's model registry client under this one, its calls bounded as ours. For writes
        to a registered model the caller has read with this client (which refuses prompts):
        MlflowClient re-reads the model before each alias move or version delete."""
        return _Bounded(self._get_registry_client(), self._genpipe_uri)


class _Bounded:
    """Any MLflow client object whose public methods run through `call`."""

    def __init__(self, inner: Any, uri: str) -> None:
        self._inner, self._uri = inner, uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return lambda *args, **kwargs: call(self._uri, name, attr, *args, **kwargs)


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


class Killed(BaseException):
    """The task process got SIGTERM (or SIGINT): unwinds like KeyboardInterrupt."""


class RunStatus:
    """What `run_status` does on success: `final` ends the MLflow run FINISHED. `run`: the
    MLflow run as read on entry (its data is what the task reads first: saves a round trip)."""

    def __init__(self, final: bool, run: Any = None) -> None:
        self.final = final
        self.run = run


def _ensure_running(c: MlflowClient, run_id: str) -> Any:
    """Mark the run RUNNING unless it is; returns the run as read. One request when it already
    is (the usual case), where `update_run` always costs two (it reads the run, then writes)."""
    run = c.get_run(run_id)
    if run.info.status != "RUNNING":
        c.update_run(run_id, status="RUNNING")
    return run


@contextlib.contextmanager
def run_status(run_id: str, final: bool = False, run: Any = None) -> Iterator[RunStatus]:
    """Keep the MLflow run's status true to the pipeline task running inside this block.

    The run is RUNNING while the task runs (a retried task re-opens a FAILED run); an
    exception marks it FAILED, SIGTERM/SIGINT mark it KILLED (then the task exits as it would
    have); on success the last task of the pipeline (`final`, settable inside the block) marks
    it FINISHED. Done by the components themselves, so it holds on a cluster as locally.
    `run`: the run as the caller just read or created it; when it is RUNNING, it is not
    read again.
    """
    c = client()
    running = run is not None and run.info.run_id == run_id and run.info.status == "RUNNING"
    status = RunStatus(final, run if running else _ensure_running(c, run_id))
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def killed(signum: int, _frame: Any) -> None:
            raise Killed(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, killed)
    try:
        yield status
    except BaseException as e:
        verdict = "KILLED" if isinstance(e, (Killed, KeyboardInterrupt)) else "FAILED"
        _terminate(c, run_id, verdict)
        raise
    else:
        if status.final:
            _terminate(c, run_id, "FINISHED")
        else:  # code inside may have ended it (a `with mlflow.start_run(...)` block does)
            _ensure_running(c, run_id)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminate(c: MlflowClient, run_id: str, verdict: str) -> None:
    """End the run with `verdict`; a failure to say so is reported, never masks the task's error."""
    uri = mlflow.get_tracking_uri()
    plain = MlflowClient(uri)  # unwrapped: `call` below is the one bounded retry
    try:
        # Short: when MLflow itself is the outage that failed the task, do not wait it out twice.
        call(
            uri,
            f"marking run {run_id} {verdict}",
            plain.set_terminated,
            run_id,
            verdict,
            budget=min(10.0, retry_seconds()),
        )
    except Exception as e:  # noqa: BLE001 - the task's own outcome matters more
        print(f"could not mark MLflow run {run_id} {verdict}: {e}", file=sys.stderr, flush=True)


def check_registered_name(name: str, where: str = "--name") -> str:
    """`name` if the MLflow registry accepts it as a registered model name, else a ConfigError.

    MLflow's rules (mlflow/utils/validation.py `_validate_model_name`): not blank, no '/' or
    ':', not '.' or '..'; and ours: no '@', which separates an alias in NAME@ALIAS references.
    """
    bad = ""
    if not name.strip():
        bad = "it is blank"
    elif any(ch in name for ch in "/:@"):
        bad = f"it contains {next(ch for ch in name if ch in '/:@')!r}"
    elif name in (".", ".."):
        bad = "it is a path"
    if bad:
        raise ConfigError(
            f"{where} {name!r} is not a valid registered model name ({bad}): use letters, "
            "digits, '-', '_', '.' and spaces, without '/', ':' or '@'"
        )
    return name


def git_commit() -> str:
    """The commit this code was built from: GENPIPE_GIT_COMMIT (set in images), else git, else 'unknown'."""
    if os.environ.get("GENPIPE_GIT_COMMIT"):
        return os.environ["GENPIPE_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def get_or_create_run(
    c: MlflowClient,
    experiment: str,
    pipeline_run_id: str,
    model_name: str,
    run_name: str | None = None,
) -> str:
    """The MLflow run id for this pipeline run: found by tag, or created once."""
    return get_or_create(c, experiment, pipeline_run_id, model_name, run_name).info.run_id


def find_run(c: MlflowClient, experiment: str, pipeline_run_id: str) -> tuple[str | None, Any]:
    """(the experiment's id, the MLflow run of this pipeline run): None for what does not
    exist yet. Reads only: a task may look while it checks its input, and create after."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None, None
    found = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{names.TAG_PIPELINE_RUN}` = '{pipeline_run_id}'",
        max_results=1,
    )
    return exp.experiment_id, (found[0] if found else None)


def get_or_create(
    c: MlflowClient,
    experiment: str,
    pipeline_run_id: str,
    model_name: str,
    run_name: str | None = None,
    found: tuple[str | None, Any] | None = None,
    git: str | None = None,
) -> Any:
    """The MLflow run (with its params and tags) for this pipeline run: found by tag, or
    created once. `found`: what `find_run` answered, when the caller looked already; `git`:
    git_commit() when the caller has it."""
    exp_id, run = found if found is not None else find_run(c, experiment, pipeline_run_id)
    if run is not None:
        return run
    # Between the look and the create only this task runs for this pipeline run: KFP starts a
    # retry of a task after the failed attempt ended.
    if exp_id is None:
        exp_id = _create_experiment(c, experiment)
    return c.create_run(
        exp_id,
        run_name=run_name or f"{model_name}-{pipeline_run_id[-8:]}",
        tags={
            names.TAG_PIPELINE_RUN: pipeline_run_id,
            names.TAG_MODEL: model_name,
            names.TAG_GIT: git_commit() if git is None else git,
        },
    )


def _create_experiment(c: MlflowClient, name: str) -> str:
    try:
        return c.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        # Another component created it between our lookup and create.
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_url(settings: Settings, run_id: str, experiment_id: str) -> str:
    return f"{settings.mlflow_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
