"""Embedded mode: run a model's pipeline on this machine with kfp.local, against the embedded stack.

The pipeline is the same one `genpipe compile` produces for a cluster; kfp.local's
SubprocessRunner runs each component as a subprocess of this Python (no containers) and
ignores the Kubernetes platform config; with an image (`genpipe run --containers`) its
DockerRunner runs each task in a container instead (pipelines.containers).

`genpipe run` goes through pipelines.local_request (in the warm task server when there is one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import warm
from pipelines.local_events import (  # noqa: F401  (exit_cause, _EventStream: re-exported)
    _ANSI,
    _EventStream,
    _recording_exit_codes,
    exit_cause,
)
from pipelines.local_interrupt import interrupted, interruptible_subprocesses
from pipelines.local_kfp import _patch_kfp_local_conditions, cheap_task_config
from zoo import names, timeline
from zoo.errors import GenpipeError
from zoo.settings import Settings, state_dir

#: what `genpipe run` shows: (kind, fields) of task starts/ends, progress, waits (local_events)
OnEvent = Callable[[str, dict[str, Any]], None]


@dataclass
class LocalRunResult:
    model: str
    mlflow_run_id: str
    run_url: str
    wall_s: float
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: list[str] = field(default_factory=list)
    #: local copies of the evaluation artifacts `genpipe run` prints (SHOWN: report.html,
    #: samples.png); `artifacts` names all of them
    local_dir: Path | None = None
    #: with --containers: what each task container was and did (pipelines.containers)
    containers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def blessed(self) -> bool:
        return self.tags.get(names.TAG_BLESSED) == "true"

    @property
    def registered_version(self) -> str | None:
        return self.tags.get(names.TAG_REGISTERED_VERSION)

    @property
    def unchanged_since(self) -> str | None:
        """The champion version this run equals (same data, config, code): nothing trained."""
        return self.tags.get(names.TAG_UNCHANGED) or None

    @property
    def aliases(self) -> list[str]:
        return [a for a in self.tags.get(names.TAG_ALIASES, "").split(",") if a]


def check_run_args(
    model: str,
    preset: str,
    overrides: dict[str, Any],
    thresholds: str,
    registered_name: str = "",
    source: str = "",
    resume: str = "",
    test_fraction: float = 0.1,
    champion_tolerance: float = 0.0,
) -> dict[str, Any]:
    """`zoo.request.RunRequest.checked()` for `genpipe run` (in the warm process, where the
    model modules are imported): returns the config's `epochs` and `registered_name` (--name,
    else MODEL-DATASET). With `resume` (an MLflow run id; needs the stack's environment), also
    that this run can resume it: its `latest.json` comes back as `resume` (step, status)."""
    from zoo.request import RunRequest

    run = RunRequest(
        model,
        source=source,
        preset=preset,
        overrides=overrides,
        thresholds=thresholds,
        registered_name=registered_name,
        test_fraction=test_fraction,
        champion_tolerance=champion_tolerance,
    ).checked()
    cfg = run.config
    checked: dict[str, Any] = {"epochs": cfg.epochs, "registered_name": run.registered_name}
    if resume:
        from zoo import checkpoints, tracking
        from zoo import config as cfgmod
        from zoo.storage import ObjectStore

        params = tracking._flatten({"model": model, "preset": preset, **cfgmod.to_dict(cfg)})
        checked["resume"] = checkpoints.check_resume(
            tracking.client(), ObjectStore.from_env(), resume, model, source, params
        )
    return checked


def result_fields(res: LocalRunResult) -> dict[str, Any]:
    """`res` as JSON-able fields (`result_from_fields` reverses it)."""
    out = dataclasses.asdict(res)
    out["local_dir"] = str(res.local_dir) if res.local_dir else None
    return out


def result_from_fields(fields: dict[str, Any]) -> LocalRunResult:
    """The LocalRunResult that `result_fields` made `fields` of."""
    local_dir = fields.get("local_dir")
    return LocalRunResult(**{**fields, "local_dir": Path(local_dir) if local_dir else None})


def run_local(
    model: str,
    source: str = "digits",
    preset: str = "default",
    overrides: dict[str, Any] | None = None,
    experiment: str | None = None,
    registered_name: str | None = None,
    thresholds: str = "",
    champion_tolerance: float = 0.0,
    test_fraction: float = 0.1,
    retries: int = 0,
    start_stack: bool = True,
    on_event: OnEvent | None = None,
    image: str | None = None,
    resume_from: str = "",
    force: bool = False,
) -> LocalRunResult:
    """Run `model`'s pipeline locally, starting the embedded stack if needed.

    `registered_name` defaults to MODEL-DATASET (`vae-digits`): a champion is compared only
    with models trained on its own dataset. `resume_from` (an interrupted run's MLflow run id)
    starts training from that run's newest checkpoint (see `check_run_args` and zoo.checkpoints).
    A run whose data, resolved config and code equal the champion's skips training (the
    result's `unchanged_since` is that champion's version) unless `force` or `resume_from`.

    With `image`, each task runs in a container of that image as a pod would
    (pipelines.containers); otherwise as a subprocess of this Python.

    kfp.local's own output (task logs, executor JSON) goes to a log file under the state dir;
    `on_event(kind, fields)` receives task starts/ends and training progress for display.
    A failed task raises GenpipeError with the task's own error line and the log path.
    Tasks run as forks of a warm process (pipelines.warm) unless GENPIPE_WARM_TASKS=0.
    """
    _patch_kfp_local_conditions()
    log_path = state_dir() / "logs" / f"run-{model}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    warm.prestart(state_dir())  # no-op if the CLI did
    try:
        with (
            interruptible_subprocesses(),
            warm.warm_tasks(state_dir()),
            _containers(image) as session,
        ):
            return _run(
                model,
                log_path,
                session=session,
                start_stack=start_stack,
                on_event=on_event,
                retries=retries,
                pipeline_args={
                    "source": source,
                    "preset": preset,
                    "overrides": json.dumps(overrides or {}),
                    "experiment": experiment or f"genpipe-{model}",
                    "registered_name": registered_name or _default_name(model, source),
                    "thresholds": thresholds,
                    "champion_tolerance": champion_tolerance,
                    "test_fraction": test_fraction,
                    "resume_from": resume_from,
                    # Resuming is a request to finish that training: never skipped.
                    "force": force or bool(resume_from),
                },
            )
    finally:
        warm.release()


#: (model, retries) -> the model's pipeline for subprocess tasks (cpu profile, no image),
#: built in the warm server before it forks (`prebuild_pipelines`): what `_run` would build
_PREBUILT: dict[tuple[str, int], Any] = {}


def prebuild_pipelines() -> None:
    """Build every model's local pipeline (retries 0, `genpipe run`'s default) now, in the warm
    server before it forks: its run forks then start from it instead of building it again.
    Building only traces the pipeline function (nothing runs, nothing reads the environment);
    kfp.local reads its configuration when the pipeline is called."""
    from pipelines.factory import build_pipeline
    from zoo import models

    with cheap_task_config():
        for name in models.names():
            _PREBUILT[(name, 0)] = build_pipeline(name, "cpu", image=None, retries=0)


def _default_name(model: str, source: str) -> str:
    """MODEL-DATASET (zoo.data.sources.default_registered_name)."""
    from zoo.data.sources import default_registered_name

    return default_registered_name(model, source)


@contextlib.contextmanager
def _containers(image: str | None) -> Any:
    """A pipelines.containers session for `image`, or None (subprocess tasks)."""
    if not image:
        yield None
        return
    from pipelines import containers

    with containers.session(state_dir(), image) as s:
        yield s


def _run(
    model: str,
    log_path: Path,
    session: Any,
    start_stack: bool,
    on_event: Callable[[str, dict[str, str]], None] | None,
    retries: int,
    pipeline_args: dict[str, Any],
) -> LocalRunResult:
    import kfp.local

    from genpipe.ops import stack
    from pipelines.factory import build_pipeline

    if start_stack:
        os.environ.update(stack.ensure_up())
    timeline.mark("run: stack up")
    Settings.from_env()  # fails now, naming what is missing, rather than in a task
    if session is None:
        root = state_dir() / "kfp-local"
        root.mkdir(parents=True, exist_ok=True)
        runner: Any = kfp.local.SubprocessRunner(use_venv=False)
    else:  # the same pipeline, each task in a container of session.image
        root = session.pipeline_root
        runner = kfp.local.DockerRunner(**session.run_args())
    kfp.local.init(
        runner=runner,
        pipeline_root=str(root),
        raise_on_error=True,
        **({"workspace_root": str(session.workspace)} if session else {}),
    )
    pipeline = _PREBUILT.get((model, retries)) if session is None else None
    if pipeline is None:
        with cheap_task_config():
            pipeline = build_pipeline(
                model, "cpu", image=session.image if session else None, retries=retries
            )
    # Expected in embedded mode (the platform config is for the cluster; components run in
    # this Python, not in the image): kfp.local's warnings about both are noise here.
    timeline.mark("run: pipeline built")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    t0 = time.perf_counter()
    # Line-buffered: `tail -f` and a killed run's log show every line written so far.
    with open(log_path, "w", encoding="utf-8", buffering=1) as log:
        stream = _EventStream(log, on_event)
        try:
            with contextlib.redirect_stdout(stream), _recording_exit_codes(stream):
                task = pipeline(**pipeline_args)
        except KeyboardInterrupt:  # Ctrl-C: the running task was stopped (and waited for)
            interrupted(stream, on_event)
            raise
        except RuntimeError as e:  # kfp's message colours task names: plain text here
            # A task that died unannounced (SIGKILL) left its MLflow run RUNNING: the
            # pipeline's exit task (components/finalize.py) has already marked it FAILED, here
            # as on a cluster, so this runner does not mark runs itself.
            raise GenpipeError(
                stream.failure_message(log_path) or f"{_ANSI.sub('', str(e))} (log: {log_path})"
            ) from None
    wall = time.perf_counter() - t0
    timeline.mark("run: pipeline done")
    # In the warm server when there is one: this process then never imports MLflow.
    fields = warm.call("pipelines.local:summary_fields", model=model, mlflow_run_id=task.output)
    timeline.mark("run: result read back")
    return LocalRunResult(
        **{k: v for k, v in fields.items() if k not in ("local_dir", "containers")},
        wall_s=wall,
        local_dir=Path(fields["local_dir"]) if fields["local_dir"] else None,
        containers=list(session.records) if session else [],
    )


def summary_fields(model: str, mlflow_run_id: str) -> dict[str, Any]:
    """`summarize` as JSON-able fields (everything but the wall time)."""
    out = result_fields(summarize(Settings.from_env(), model, mlflow_run_id, 0.0))
    out.pop("wall_s")
    return out


#: the evaluation artifacts whose local paths `genpipe run` prints (genpipe/cli/pipeline.py)
SHOWN = ("report.html", "samples.png")


def summarize(settings: Settings, model: str, mlflow_run_id: str, wall_s: float) -> LocalRunResult:
    """Read back what the pipeline recorded in MLflow: the run, the names of its evaluation
    artifacts, and local copies of the ones the CLI prints (SHOWN).

    After reading the run, one listing and the SHOWN downloads go out at once (threads): the
    run's seconds are spent waiting on MLflow, not on downloading files nobody opens (the
    other figures are in report.html and in MLflow)."""
    from concurrent.futures import ThreadPoolExecutor

    from zoo import tracking

    c = tracking.client(settings)
    run = c.get_run(mlflow_run_id)
    local_dir = state_dir() / "runs" / mlflow_run_id
    arts: list[str] = []
    # A run that skipped evaluation (unchanged since the champion) has none.
    if not run.data.tags.get(names.TAG_UNCHANGED):
        repo = tracking.artifact_repo(run.info.artifact_uri, c.tracking_uri)
        (local_dir / "evaluation").mkdir(parents=True, exist_ok=True)

        def fetch(name: str) -> BaseException | None:
            # An artifact repository's own one-request download (what its download_artifacts
            # calls per file); the error is judged once the listing says what exists.
            try:
                tracking.retrying(
                    "reading the run's evaluation",
                    repo._download_file,
                    f"evaluation/{name}",
                    str(local_dir / "evaluation" / name),
                )
            except Exception as e:  # noqa: BLE001 - judged below
                (local_dir / "evaluation" / name).unlink(missing_ok=True)
                return e
            return None

        with ThreadPoolExecutor(1 + len(SHOWN)) as pool:
            listing = pool.submit(_list_files, repo, "evaluation")
            fetched = {name: pool.submit(fetch, name) for name in SHOWN}
            arts = sorted(listing.result())
            for name, done in fetched.items():
                error = done.result()
                if error is not None and f"evaluation/{name}" in arts:
                    raise error  # it exists, and could not be read
    shown = [n for n in SHOWN if (local_dir / "evaluation" / n).is_file()]
    return LocalRunResult(
        model=model,
        mlflow_run_id=mlflow_run_id,
        run_url=tracking.run_url(settings, mlflow_run_id, run.info.experiment_id),
        wall_s=wall_s,
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        artifacts=arts,
        local_dir=local_dir / "evaluation" if shown else None,
    )


def _list_files(repo: Any, path: str) -> list[str]:
    """Every file under `path` in artifact repository `repo` (run-relative paths)."""
    from zoo import tracking

    out = []
    for info in tracking.retrying("reading the run's evaluation", repo.list_artifacts, path):
        if info.is_dir:
            out += _list_files(repo, info.path)
        else:
            out.append(info.path)
    return out
