"""MLflow tracking helpers: one MLflow run per pipeline run, found again on retries.

Every component of one pipeline run logs into the same MLflow run, found by the tag
`genpipe.pipeline_run_id`, so a retried component (KFP re-runs it from scratch) appends to
that run instead of creating a duplicate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from zoo import names
from zoo.errors import ConfigError

# Their home was here: callers use tracking.call, tracking.retrying, tracking.artifact_repo.
from zoo.mlflow_calls import (  # noqa: F401
    _MLFLOW_QUIET_URL,
    ENV_RETRY_SECONDS,
    _bound_mlflow_http,
    _set_knob,
    artifact_repo,
    call,
    retry_seconds,
    retrying,
    skip_absent_context_probes,
)
from zoo.runlog import RunLogger, _flatten  # noqa: F401 - their home was here
from zoo.settings import Settings


def client(settings: Settings | None = None) -> MlflowClient:
    """An MLflow client for the configured tracking server (sets the global URI too).

    Every call through it retries connection errors, timeouts and transient HTTP errors for
    GENPIPE_RETRY_SECONDS, printing one line to stderr when it starts waiting, then fails with
    one GenpipeError naming the endpoint (see `call`).
    """
    settings = settings or Settings.from_env()
    skip_absent_context_probes()
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
            if run_id not in _finished:  # unless the task ended it already (`finish`)
                _terminate(c, run_id, "FINISHED")
        else:  # code inside may have ended it (a `with mlflow.start_run(...)` block does)
            _ensure_running(c, run_id)
    finally:
        _finished.discard(run_id)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: runs this process ended FINISHED with `finish`: a final `run_status` does not end them again
_finished: set[str] = set()


def finish(run_id: str) -> None:
    """End the run FINISHED now: the pipeline's last task, beside its last writes (one round
    trip fewer than ending it after them). The enclosing final `run_status` then leaves it
    (an error after this still marks it FAILED); a failure to end it is reported, and that
    `run_status` tries once more."""
    if _terminate(client(), run_id, "FINISHED"):
        _finished.add(run_id)


def _terminate(c: MlflowClient, run_id: str, verdict: str, budget: float | None = None) -> bool:
    """End the run with `verdict` (within `budget` s; default: short, see below); a failure
    to say so is reported (False), never masks the task's error."""
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
            budget=min(10.0, retry_seconds()) if budget is None else budget,
        )
    except Exception as e:  # noqa: BLE001 - the task's own outcome matters more
        print(f"could not mark MLflow run {run_id} {verdict}: {e}", file=sys.stderr, flush=True)
        return False
    return True


def end_interrupted(run_id: str, budget: float = 5.0) -> str:
    """End run `run_id` KILLED, tagged why, unless it ended already (its task marks it KILLED
    itself on SIGTERM/SIGINT; one killed outright could not): what `genpipe run` does when
    interrupted, since the pipeline's exit task does not run then. Returns the run's status
    afterwards, "" when MLflow did not answer within `budget` s (an interrupt stays prompt)."""
    try:
        client()  # the tracking URI and bounded HTTP settings, as every caller's
        uri = mlflow.get_tracking_uri()
        plain = MlflowClient(uri)  # unwrapped: `call` below is the one bounded retry
        run = call(uri, f"reading run {run_id}", plain.get_run, run_id, budget=budget)
        if run.info.status not in ("RUNNING", "SCHEDULED"):
            return str(run.info.status)
        call(uri, "tagging", plain.set_tag, run_id, names.TAG_FAILURE, "interrupted", budget=budget)
    except Exception as e:  # noqa: BLE001 - the interrupt matters more
        print(f"could not mark MLflow run {run_id} KILLED: {e}", file=sys.stderr, flush=True)
        return ""
    return "KILLED" if _terminate(plain, run_id, "KILLED", budget) else ""


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
