"""Pipelines on this machine: `genpipe models`, `run` (kfp.local) and `compile` (KFP IR YAML).

`run` checks the whole request once (zoo.request.RunRequest, in the warm task process) before
anything runs; `submit`/`schedule` (genpipe/cli/cluster.py) check the same request. With a
warm task server the whole run happens in it (pipelines.local_request.run_cli): this process only
shows its events, and imports neither kfp, TensorFlow, MLflow nor minio.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from zoo.errors import ConfigError
from zoo.request import RunRequest


class _Console:
    """A rich Console made on first use: rich takes ~0.05 s to import, which `genpipe run`
    spends while the warm server forks and checks its request (`_import_rich`), not before."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs, self._console = kwargs, None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            with _RICH:  # after `_import_rich` in another thread, never beside it
                from rich.console import Console

            self._console = Console(**self._kwargs)
        return getattr(self._console, name)


#: held while rich is imported: one thread imports it, others wait for it to be done
_RICH = threading.Lock()


def _import_rich() -> None:
    """What the run's display imports (`_progress`, the result table)."""
    with _RICH:
        import rich.console
        import rich.progress
        import rich.table  # noqa: F401


out = _Console()
err = _Console(stderr=True)
#: `genpipe run`'s exit code when the pipeline ran but the model was not blessed
NOT_BLESSED_EXIT = 3
#: `genpipe run`'s exit code after Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED_EXIT = 130
#: a run's events (pipelines.local.OnEvent): task starts/ends, progress, waits, output lines
OnEvent = Callable[[str, dict[str, Any]], None]


@contextlib.contextmanager
def _progress() -> Iterator[OnEvent]:
    """A rich progress display fed by pipeline events (task start/end, training epochs)."""
    with _RICH:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
        )

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        bars: dict[str, TaskID] = {}

        def on_event(kind: str, f: dict[str, Any]) -> None:
            name = f.get("task", "")
            if kind == "task_start":
                bars[name] = progress.add_task(name, total=None, info="")
            elif kind == "task_end" and name in bars:
                ok = f["status"] == "SUCCESS"
                progress.update(
                    bars[name], total=1, completed=1, info="done" if ok else "[red]failed[/red]"
                )
            elif kind == "waiting":  # an outage or a held lock: say what the task waits on
                progress.console.print(f"{name}: {f['message']}", highlight=False)
            elif kind == "output":  # a line the run printed (warm server: its fds 1 and 2)
                progress.console.print(f["line"], markup=False, highlight=False)
            elif kind == "progress" and name in bars:
                progress.update(
                    bars[name],
                    total=int(f.get("epochs", 1)),
                    completed=int(f.get("epoch", 0)),
                    info=f"epoch {f.get('epoch')}/{f.get('epochs')} loss {f.get('loss')} ({f.get('samples_per_s')} samples/s)",
                )

        yield on_event


def _resume_command(
    model: str,
    data: str,
    preset: str,
    sets: list[str],
    name: str,
    thresholds: str,
    tolerance: float,
    test_fraction: float,
    experiment: str,
) -> str:
    """The `genpipe run` that resumes this one, less `--resume RUN_ID`: the options given
    that differ from their defaults."""
    import shlex

    args = ["genpipe", "run", model]
    for flag, value, default in (
        ("--data", data, "digits"),
        ("--preset", preset, "default"),
        ("--name", name, ""),
        ("--thresholds", thresholds, ""),
        ("--tolerance", tolerance, 0.0),
        ("--test-fraction", test_fraction, 0.1),
        ("--experiment", experiment, ""),
    ):
        if value != default:
            args += [flag, str(value)]
    for s in sets:
        args += ["--set", s]
    return shlex.join(args)


def _interrupted_line(seen: dict[str, Any], command: str) -> str:
    """One line after Ctrl-C: which MLflow run was interrupted, how it ended, how to resume."""
    run_id = seen.get("run_id", "")
    if not run_id:
        return "interrupted during ingest (nothing trained): nothing to resume"
    # "": the run's fork could not read it back (MLflow down, or a second Ctrl-C)
    ended = f"ended {seen['status']}" if seen.get("status") else "was stopped"
    if seen.get("task") == "ingest":
        return f"interrupted: MLflow run {run_id} {ended} during ingest: nothing to resume"
    return f"interrupted: MLflow run {run_id} {ended}; resume it with: {command} --resume {run_id}"


@contextlib.contextmanager
def _shown(
    on_checked: Callable[[dict[str, Any]], None], also: OnEvent | None = None
) -> Iterator[OnEvent]:
    """`genpipe run`'s display: `on_checked` once the request passed its checks, then the
    progress bars (so a refused request prints its one error line and nothing else); lines
    the run prints (events of kind "output") go to stderr. `also` gets every event too."""
    with contextlib.ExitStack() as stack:
        shown: list[OnEvent] = []

        def on_event(kind: str, f: dict[str, Any]) -> None:
            if also is not None:
                also(kind, f)
            if kind == "checked":
                on_checked(f)
                shown.append(stack.enter_context(_progress()))
            elif shown:
                shown[0](kind, f)
            elif kind == "output":
                err.print(f["line"], markup=False, highlight=False)

        yield on_event


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd() -> None:
        """List the registered models."""
        from rich.table import Table

        from zoo import models

        table = Table("model", "family", "primary metric", "config")
        for name in models.names():
            cls = models.get(name)
            table.add_row(name, cls.family, cls.primary_metric, cls.config_cls.__name__)
        out.print(table)

    @app.command("run")
    def run_cmd(
        model: str = typer.Argument(..., help="Registered model name (see `genpipe models`)."),
        data: str = typer.Option(
            "digits",
            "--data",
            "-d",
            help="Data source: digits | idx:PATH | npz:PATH[,labels=PATH] | text:PATH | s3://bucket/prefix.",
        ),
        sets: list[str] = typer.Option(
            [], "--set", "-s", help="Config override key=value (repeatable), e.g. --set epochs=5."
        ),
        preset: str = typer.Option(
            "default", help="Config preset: default or tiny (seconds, for smoke tests)."
        ),
        experiment: str = typer.Option("", help="MLflow experiment (default genpipe-MODEL)."),
        name: str = typer.Option(
            "",
            "--name",
            help="Registered model name in MLflow (default MODEL-DATASET from --data: vae-digits, vae-mnist for idx:.../mnist).",
        ),
        thresholds: str = typer.Option(
            "",
            help='Blessing thresholds as JSON over the defaults, e.g. \'{"test_neg_elbo": {"max": 150}}\'.',
        ),
        tolerance: float = typer.Option(
            0.0, help="Bless when no worse than the champion by this fraction (0.01 = 1%)."
        ),
        test_fraction: float = typer.Option(
            0.1, help="Fraction of the data held out for evaluation."
        ),
        retries: int = typer.Option(0, help="Retries per task (cluster pipelines default to 2)."),
        containers: bool = typer.Option(
            False,
            "--containers",
            help="Run each task in its component image (Docker engine or podman), as a pod would: uid 10001, read-only root filesystem, a tmpfs /tmp.",
        ),
        image: str = typer.Option(
            "",
            help="With --containers: the component image (default: the cpu profile's, built by `genpipe images build --variant cpu`).",
        ),
        resume: str = typer.Option(
            "",
            "--resume",
            metavar="RUN_ID",
            help="Continue an interrupted run (its MLflow run id; `genpipe gc` lists them) with the same model, data and config: training starts from its newest checkpoint, or, when its training had finished (evaluate or register failed), is skipped and its model evaluated and registered.",
        ),
        force: bool = typer.Option(
            False,
            "--force",
            help="Train even when data, resolved config and code equal the champion's (such a run is otherwise skipped in seconds).",
        ),
    ) -> None:
        """Run MODEL's pipeline (ingest -> train -> evaluate -> register) locally with kfp.local.

        Starts the embedded stack (SeaweedFS + MLflow) if it is not up.

        A run whose data (fingerprint), resolved config and code (git commit) equal the
        champion's trains nothing: it says "unchanged since champion vN" and exits 0
        (`--force` trains anyway).

        Exit codes: 0 blessed (registered) or unchanged since the champion, 1 error (one line; a run that had started ends
        FAILED in MLflow), 2 bad usage, 3 trained and evaluated but not blessed (nothing
        registered; the failed thresholds are printed), 130 interrupted (Ctrl-C stops the
        running task, its run ends KILLED; one line says how to --resume it).
        """
        from pipelines.local_request import run_cli
        from zoo import models, timeline

        timeline.mark("cli parsed")
        models.check_name(model)
        if image and not containers:
            raise ConfigError(f"--image {image!r} needs --containers (tasks run in this Python)")
        if containers:
            from pipelines.profile import load_profile  # not platform: that imports kfp
            from zoo.refs import check_image

            image = check_image(image, "--image") if image else load_profile("cpu").image
        request = RunRequest.from_cli(
            model,
            source=data,
            preset=preset,
            sets=sets,
            thresholds=thresholds,
            registered_name=name,
            test_fraction=test_fraction,
            champion_tolerance=tolerance,
        )
        checked: dict[str, Any] = {}

        def on_checked(f: dict[str, Any]) -> None:
            """The request passed its checks (in the warm process, where the model modules are
            imported; nothing has run yet): say what runs."""
            checked.update(f)
            out.print(
                f"[bold]genpipe run {model}[/bold] on {data} ({preset} config: epochs={f['epochs']})"
            )
            point = f.get("resume") or {}
            if point.get("model_uri"):  # its training finished; evaluate or register failed
                said = f"training skipped: run {resume} ({point['status']}) finished training; "
                out.print(f"{said}evaluating its model {point['model_uri']}", highlight=False)
            elif point:
                said = f"resuming from step {point['step']} of run {resume} ({point['status']})"
                out.print(said, highlight=False)

        seen: dict[str, Any] = {}  # the run's MLflow run id, and how an interrupt ended it

        def keep(kind: str, f: dict[str, Any]) -> None:
            if kind in ("run", "interrupted"):
                seen.update(f)

        try:
            with _shown(on_checked, keep) as on_event:
                # With a warm server, the whole run happens in it: this process never imports
                # kfp, TensorFlow or MLflow (pipelines.local_request.run_cli), and imports rich
                # (what it shows first) while the server forks and checks the request.
                res = run_cli(
                    {
                        **request.to_kwargs(),
                        "resume": resume,
                        "experiment": experiment,
                        "champion_tolerance": tolerance,
                        "retries": retries,
                        "force": force,
                    },
                    on_event,
                    image=image or None,
                    meanwhile=_import_rich,
                )
        except KeyboardInterrupt:  # Ctrl-C: the run's task was stopped and waited for
            again = _resume_command(
                model, data, preset, sets, name, thresholds, tolerance, test_fraction, experiment
            )
            err.print(_interrupted_line(seen, again), highlight=False, soft_wrap=True)
            raise typer.Exit(INTERRUPTED_EXIT) from None
        timeline.mark("cli has result")
        name = checked["registered_name"]  # --name, or MODEL-DATASET
        if res.unchanged_since:
            out.print(
                f"unchanged since champion v{res.unchanged_since} of {name} (same data, config "
                "and code): nothing trained; --force retrains",
                highlight=False,
            )
            out.print(f"MLflow run:   {res.run_url}")
            out.print(f"wall time:    {res.wall_s:.1f} s")
            return
        from rich.table import Table

        table = Table("metric", "value", title=f"{model}: MLflow run {res.mlflow_run_id}")
        for k in sorted(res.metrics):
            if k.startswith(
                ("test_", "val_", "champion_", "train_wall", "train_samples_per_s_overall")
            ):
                table.add_row(k, f"{res.metrics[k]:.4f}")
        out.print(table)
        out.print(f"MLflow run:   {res.run_url}")
        if res.local_dir:
            from pipelines.local import SHOWN  # loaded with run_cli: no import cost

            for artifact in SHOWN:
                if (res.local_dir / artifact).exists():
                    out.print(f"{artifact + ':':13} {res.local_dir / artifact}")
        if res.blessed and res.registered_version:
            out.print(
                f"registered:   {name or model} v{res.registered_version} aliases={','.join(res.aliases)}"
            )
        else:
            out.print("registered:   no (not blessed; see evaluation/report.html)")
        out.print(f"wall time:    {res.wall_s:.1f} s")
        for c in res.containers:  # --containers: what each task's container was, as checked
            probe = c.get("probe", {})
            out.print(
                f"container:    {c['task']}: uid {probe.get('uid', '?')}, root filesystem "
                f"{'read-only' if c.get('read_only_rootfs') else 'WRITABLE'} "
                f"(a write to $HOME: {probe.get('home', '?')}), exit {c.get('exit_code', '?')}"
            )
        if not res.blessed:
            from zoo.names import TAG_NOT_BLESSED

            because = res.tags.get(TAG_NOT_BLESSED, "") or "see evaluation/report.html"
            err.print(f"not blessed: {because}", highlight=False, soft_wrap=True)
            raise typer.Exit(NOT_BLESSED_EXIT)

    @app.command("compile")
    def compile_cmd(
        model: str = typer.Argument(..., help="Registered model name."),
        output: Path = typer.Option(..., "--output", "-o", help="Where to write the KFP IR YAML."),
        profile: str = typer.Option(
            "cpu",
            help="Cluster profile: gke | eks | aks | generic-nvidia | cpu, or a profile YAML path.",
        ),
        image: str = typer.Option(
            "", help="Component image (default: the profile's, tagged with this version)."
        ),
        retries: int = typer.Option(2, help="Retries per task."),
    ) -> None:
        """Compile MODEL's pipeline to KFP IR YAML with the profile's GPU, scheduling and secrets."""
        from pipelines.factory import compile_pipeline
        from zoo.refs import check_image

        # Same rule as submit/schedule: a compiled pipeline must name a pinned image.
        compile_pipeline(
            model,
            str(output),
            profile,
            check_image(image, "--image") if image else None,
            retries=retries,
        )
        out.print(f"wrote {output} ({model}, profile {profile})")
