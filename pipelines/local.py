"""Embedded mode: run a model's pipeline on this machine with kfp.local, against the embedded stack.

The pipeline is the same one `genpipe compile` produces for a cluster; kfp.local's
SubprocessRunner runs each component as a subprocess of this Python (no containers) and
ignores the Kubernetes platform config; with an image (`genpipe run --containers`) its
DockerRunner runs each task in a container instead (pipelines.containers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import warm
from zoo import names
from zoo.errors import GenpipeError
from zoo.settings import Settings, state_dir


@dataclass
class LocalRunResult:
    model: str
    mlflow_run_id: str
    run_url: str
    wall_s: float
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: list[str] = field(default_factory=list)
    #: local copies of the evaluation artifacts (report.html, samples.png, ...)
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
) -> dict[str, Any]:
    """`zoo.request.RunRequest.checked()` for `genpipe run` (in the warm process, where the
    model modules are imported): returns the config's `epochs` and `registered_name` (--name,
    else MODEL-DATASET). With `resume` (an MLflow run id; needs the stack's environment), also
    that this run can resume it: its `latest.json` comes back as `resume` (step, status)."""
    from zoo.request import RunRequest

    run = RunRequest(
        model, source, preset, overrides, thresholds, registered_name, test_fraction
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
    on_event: Callable[[str, dict[str, str]], None] | None = None,
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
        with warm.warm_tasks(state_dir()), _containers(image) as session:
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
    pipeline = build_pipeline(
        model, "cpu", image=session.image if session else None, retries=retries
    )
    # Expected in embedded mode (the platform config is for the cluster; components run in
    # this Python, not in the image): kfp.local's warnings about both are noise here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    t0 = time.perf_counter()
    # Line-buffered: `tail -f` and a killed run's log show every line written so far.
    with open(log_path, "w", encoding="utf-8", buffering=1) as log:
        stream = _EventStream(log, on_event)
        try:
            with contextlib.redirect_stdout(stream), _recording_exit_codes(stream):
                task = pipeline(**pipeline_args)
        except RuntimeError as e:  # kfp's message colours task names: plain text here
            # A task that died unannounced (SIGKILL) left its MLflow run RUNNING: the
            # pipeline's exit task (components/finalize.py) has already marked it FAILED, here
            # as on a cluster, so this runner does not mark runs itself.
            raise GenpipeError(
                stream.failure_message(log_path) or f"{_ANSI.sub('', str(e))} (log: {log_path})"
            ) from None
    wall = time.perf_counter() - t0
    # In the warm server when there is one: this process then never imports MLflow.
    fields = warm.call("pipelines.local:summary_fields", model=model, mlflow_run_id=task.output)
    return LocalRunResult(
        **{k: v for k, v in fields.items() if k not in ("local_dir", "containers")},
        wall_s=wall,
        local_dir=Path(fields["local_dir"]) if fields["local_dir"] else None,
        containers=list(session.records) if session else [],
    )


@contextlib.contextmanager
def _recording_exit_codes(stream: _EventStream) -> Any:
    """Tell `stream` each task process's exit code (kfp.local keeps only pass/fail), so a
    task that died without an error line (a signal, the OOM killer) is reported by its cause."""
    from kfp.local import subprocess_task_handler as sth

    inner = sth.run_local_subprocess  # kfp's, or the warm server's (pipelines.warm)

    def run_local_subprocess(full_command: list[str], env_vars: Any = None) -> int:
        code = inner(full_command, env_vars)
        stream.task_exit(code)
        return code

    sth.run_local_subprocess = run_local_subprocess
    try:
        yield
    finally:
        sth.run_local_subprocess = inner


def exit_cause(code: int) -> str:
    """A task process's exit code in words: 'killed by SIGKILL (out of memory?)', 'exit code 2'."""
    import signal

    if code < 0 or code > 128:
        try:
            name = signal.Signals(-code if code < 0 else code - 128).name
        except ValueError:
            return f"exit code {code}"
        oom = " (out of memory?)" if name == "SIGKILL" else ""
        return f"{'killed by ' if code < 0 else f'exit code {code}: killed by '}{name}{oom}"
    return f"exit code {code}"


def summary_fields(model: str, mlflow_run_id: str) -> dict[str, Any]:
    """`summarize` as JSON-able fields (everything but the wall time)."""
    res = summarize(Settings.from_env(), model, mlflow_run_id, 0.0)
    out = dataclasses.asdict(res)
    out.pop("wall_s")
    out["local_dir"] = str(res.local_dir) if res.local_dir else None
    return out


_TASK_START = re.compile(r"Executing task .*?'(?P<task>[\w-]+)'")
_TASK_END = re.compile(
    r"Task .*?'(?P<task>[\w-]+)'.* finished with status .*?(?P<status>SUCCESS|FAILURE)"
)
_PROGRESS = re.compile(r"genpipe-progress (?P<body>.*)")
_ERROR = re.compile(
    r"^\s*(?:zoo\.errors\.|[\w.]*)(?P<kind>\w*Error|TrainingDiverged): (?P<msg>.+)$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: a task says what it waits on (zoo.tracking.call, the promotion lock): shown, not just logged
_WAITING = re.compile(r"(?P<msg>waiting for (?:MLflow|the promotion lock) .+)$")


class _EventStream(io.TextIOBase):
    """stdout replacement: writes everything to the log, turns known lines into events."""

    def __init__(self, log: Any, on_event: Callable[[str, dict[str, str]], None] | None) -> None:
        self.log = log
        self.on_event = on_event
        self.buf = ""
        self.task = ""
        self.failures: list[tuple[str, str]] = []  # (task, error line)
        self.errors_this_task = 0  # error lines since the running task started

    def write(self, s: str) -> int:
        self.log.write(s)
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(s)

    def flush(self) -> None:
        self.log.flush()

    def _emit(self, kind: str, fields: dict[str, str]) -> None:
        if self.on_event:
            self.on_event(kind, fields)

    def _line(self, line: str) -> None:
        if m := _TASK_START.search(line):
            self.task = m["task"]
            self.errors_this_task = 0
            self._emit("task_start", {"task": self.task})
        elif m := _TASK_END.search(line):
            self._emit("task_end", {"task": m["task"], "status": m["status"]})
        elif m := _PROGRESS.search(line):
            fields = dict(kv.split("=", 1) for kv in m["body"].split() if "=" in kv)
            self._emit("progress", {"task": self.task, **fields})
        elif m := _WAITING.search(line):
            self._emit("waiting", {"task": self.task, "message": m["msg"]})
        elif m := _ERROR.match(line):
            self.failures.append((self.task, f"{m['kind']}: {m['msg']}" if m["kind"] else m["msg"]))
            self.errors_this_task += 1

    def task_exit(self, code: int) -> None:
        """A task process ended; one that failed with no error line of its own is recorded
        by its exit cause (a signal or an exit code)."""
        if code != 0 and not self.errors_this_task:
            self.failures.append((self.task, exit_cause(code)))

    def failure_message(self, log_path: Path) -> str | None:
        if not self.failures:
            return None
        task, err = self.failures[-1]
        # GenpipeError subclasses carry a message meant for the user: show it alone.
        for prefix in (
            "DataError: ",
            "ConfigError: ",
            "GenpipeError: ",
            "StackError: ",
            "TrainingDiverged: ",
        ):
            if err.startswith(prefix):
                err = err[len(prefix) :]
                break
        return f"task {task} failed: {err} (full log: {log_path})"


def _patch_kfp_local_conditions() -> None:
    """Make kfp.local (2.17) evaluate `dsl.If(task.outputs[...] == ...)` conditions.

    Its ConditionEvaluator reads a condition's channel `pipelinechannel--<task>-<output>` as a
    parent input, never as the task output it is, so every such condition is False and the
    register step would never run locally. We resolve the channel against task outputs first
    (trying each '-' as the task/output boundary, as task names may contain '-'), and fall
    back to kfp's own resolution. The cluster backend is unaffected: it reads the compiled IR.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as edo

    evaluator = edo.ConditionEvaluator
    if getattr(evaluator, "_genpipe_patched", False):
        return
    original = evaluator._resolve_pipeline_channel

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.removeprefix("pipelinechannel--")
        for i, ch in enumerate(ref):
            if ch != "-":
                continue
            try:
                return io_store.get_task_output(ref[:i], ref[i + 1 :])
            except (ValueError, KeyError):
                continue
        return original(channel_ref, io_store)

    evaluator._resolve_pipeline_channel = staticmethod(resolve)
    evaluator._genpipe_patched = True


def summarize(settings: Settings, model: str, mlflow_run_id: str, wall_s: float) -> LocalRunResult:
    """Read back what the pipeline recorded in MLflow."""
    from zoo import tracking

    c = tracking.client(settings)
    run = c.get_run(mlflow_run_id)
    arts = [a.path for a in c.list_artifacts(mlflow_run_id, "evaluation")]
    # Local copies of the report and figures, so the CLI can print paths one can open.
    local_dir = state_dir() / "runs" / mlflow_run_id
    if arts:
        c.download_artifacts(mlflow_run_id, "evaluation", str(local_dir))
    return LocalRunResult(
        model=model,
        mlflow_run_id=mlflow_run_id,
        run_url=tracking.run_url(settings, mlflow_run_id, run.info.experiment_id),
        wall_s=wall_s,
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        artifacts=arts,
        local_dir=local_dir / "evaluation" if arts else None,
    )
