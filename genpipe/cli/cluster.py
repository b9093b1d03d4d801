"""Pipelines on a Kubeflow cluster: `genpipe submit`, `schedule` and `schedules`.

`submit`/`schedule` check the run (zoo.request.RunRequest, as `genpipe run` does), compile
MODEL's pipeline for a cluster profile, upload it to KFP once per content (version named by
hash) and start a run / a recurring run.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from genpipe.cli.options import PROFILE_HELP
from zoo.errors import ConfigError, GenpipeError
from zoo.refs import check_image
from zoo.request import CLI_FLAGS, RunRequest

out = Console(soft_wrap=True)  # long URLs and ids stay on one line
err = Console(stderr=True, soft_wrap=True)


def pipeline_params(
    model: str,
    data: str,
    preset: str,
    sets: list[str],
    experiment: str,
    name: str,
    thresholds: str,
    tolerance: float,
    test_fraction: float,
    force: bool = False,
    where: Mapping[str, str] = CLI_FLAGS,
) -> dict[str, Any]:
    """The pipeline's runtime parameters, checked locally so a typo fails before any upload.

    `force`: train even when data, config and code equal the champion's (else skipped).
    `where`: how errors name the options (`schedule` calls --name --registered-name)."""
    request = RunRequest.from_cli(
        model,
        source=data,
        preset=preset,
        sets=sets,
        thresholds=thresholds,
        registered_name=name,
        test_fraction=test_fraction,
        where=where,
        champion_tolerance=tolerance,
    )
    run = request.checked(where)
    kind, _, path = data.partition(":")
    if kind in ("idx", "npz", "text") and path and Path(path).expanduser().exists():
        # The pipeline's pods cannot see this machine's files.
        raise ConfigError(
            f"--data {data!r} is a file on this machine, which the cluster cannot read: "
            "upload it to the object store and pass --data s3://BUCKET/PREFIX"
        )
    return {
        "source": data,
        "preset": preset,
        "overrides": request.overrides_json(),
        "experiment": experiment or f"genpipe-{model}",
        "registered_name": run.registered_name,
        "thresholds": thresholds,
        "champion_tolerance": tolerance,
        "test_fraction": test_fraction,
        "force": force,
    }


def _compile(model: str, profile: str, image: str, retries: int, where: Path) -> Path:
    from pipelines.factory import compile_pipeline

    path = where / f"{model}.yaml"
    compile_pipeline(
        model, str(path), profile, check_image(image, "--image") if image else None, retries
    )
    return path


def _connect(host: str, token: str, cookie: str, namespace: str) -> Any:
    from genpipe.ops.kfp_auth import resolve_auth, resolve_host
    from genpipe.ops.kfp_client import Kfp

    return Kfp(resolve_host(host), resolve_auth(token, cookie), namespace)


def register(app: typer.Typer) -> None:  # noqa: C901 (one closure per command)
    """Add `submit`, `schedule` and the `schedules` group to the `genpipe` app."""
    host_opt = typer.Option("", "--host", help="KFP API URL (env GENPIPE_KFP_HOST).")
    token_opt = typer.Option(
        "", "--token", help="Bearer token (env GENPIPE_KFP_TOKEN).", show_default=False
    )
    cookie_opt = typer.Option(
        "",
        "--cookie",
        help="Cookie header, e.g. authservice_session=... (env GENPIPE_KFP_COOKIE).",
        show_default=False,
    )
    ns_opt = typer.Option(
        "", "--namespace", "-n", help="KFP namespace (multi-user Kubeflow profile)."
    )
    # Options submit and schedule share (one definition, so their help and defaults agree).
    experiment_opt = typer.Option("", help="KFP and MLflow experiment (default genpipe-MODEL).")
    data_opt = typer.Option(
        "digits",
        "--data",
        "-d",
        help="Data source the cluster can read: digits | s3://bucket/prefix | ...",
    )
    sets_opt = typer.Option([], "--set", "-s", help="Config override key=value (repeatable).")
    preset_opt = typer.Option("default", help="Config preset: default or tiny.")
    thresholds_opt = typer.Option("", help="Blessing thresholds as JSON over the defaults.")
    tolerance_opt = typer.Option(
        0.0, help="Bless when no worse than the champion by this fraction."
    )
    test_fraction_opt = typer.Option(0.1, help="Fraction of the data held out for evaluation.")
    profile_opt = typer.Option("cpu", help=PROFILE_HELP)
    image_opt = typer.Option(
        "", help="Component image (default: the profile's, tagged with this version)."
    )
    retries_opt = typer.Option(2, help="Retries per task.")
    service_account_opt = typer.Option("", help="Kubernetes ServiceAccount the runs' pods use.")
    force_opt = typer.Option(
        False,
        "--force",
        help="Train even when data, resolved config and code equal the champion's (such a run is otherwise skipped in seconds).",
    )

    @app.command("submit")
    def submit_cmd(
        model: str = typer.Argument(..., help="Model to train (see `genpipe models`)."),
        host: str = host_opt,
        token: str = token_opt,
        cookie: str = cookie_opt,
        namespace: str = ns_opt,
        experiment: str = experiment_opt,
        data: str = data_opt,
        sets: list[str] = sets_opt,
        preset: str = preset_opt,
        name: str = typer.Option(
            "",
            "--name",
            help="Registered model name in MLflow (default MODEL-DATASET, e.g. vae-digits).",
        ),
        thresholds: str = thresholds_opt,
        tolerance: float = tolerance_opt,
        test_fraction: float = test_fraction_opt,
        profile: str = profile_opt,
        image: str = image_opt,
        retries: int = retries_opt,
        service_account: str = service_account_opt,
        force: bool = force_opt,
        wait: bool = typer.Option(
            False, "--wait", help="Stream run status until it ends; exit 1 unless it succeeded."
        ),
        timeout: float = typer.Option(
            24 * 3600, help="With --wait: give up after this many seconds."
        ),
        poll: float = typer.Option(5.0, hidden=True),
    ) -> None:
        """Compile MODEL's pipeline, upload it (once per content) and start a run on KFP."""
        params = pipeline_params(
            model, data, preset, sets, experiment, name, thresholds, tolerance, test_fraction, force
        )
        with tempfile.TemporaryDirectory(prefix="genpipe-submit-") as tmp:
            # Compile first: a bad profile or image fails before any request to KFP.
            package = _compile(model, profile, image, retries, Path(tmp))
            kfp = _connect(host, token, cookie, namespace)
            pid, vid, vname, uploaded = kfp.ensure_pipeline_version(package)
        exp_id = kfp.experiment_id(params["experiment"])
        run_name = f"{model}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
        run_id = kfp.create_run(exp_id, run_name, pid, vid, params, service_account)
        out.print(f"pipeline version: {vname} ({'uploaded' if uploaded else 'unchanged, reused'})")
        out.print(f"run:              {run_name} ({run_id})")
        out.print(f"details:          {kfp.run_url(run_id)}")
        if not wait:
            return

        def on_change(state: str, tasks: dict[str, str]) -> None:
            detail = " ".join(f"{k}={v}" for k, v in sorted(tasks.items()))
            err.print(f"{dt.datetime.now():%H:%M:%S} {state} {detail}".rstrip(), highlight=False)

        final = kfp.wait(run_id, on_change, timeout=timeout, poll=poll)
        if final != "SUCCEEDED":
            raise GenpipeError(f"run {run_id} ended {final}: {kfp.run_url(run_id)}")
        out.print(f"run {run_id} SUCCEEDED")

    @app.command("schedule")
    def schedule_cmd(
        model: str = typer.Argument(..., help="Model to retrain on a schedule."),
        cron: str = typer.Option(
            "",
            help="KFP 6-field cron, seconds first: '0 0 3 * * *' = 03:00 daily; or @daily, @every 6h.",
        ),
        every: str = typer.Option("", help="Interval instead of cron: 24h, 90m, 1d12h."),
        schedule_name: str = typer.Option(
            "",
            "--name",
            "--schedule-name",
            help="Recurring run name (default genpipe-MODEL-retrain); re-using it replaces the schedule.",
        ),
        host: str = host_opt,
        token: str = token_opt,
        cookie: str = cookie_opt,
        namespace: str = ns_opt,
        experiment: str = experiment_opt,
        data: str = data_opt,
        sets: list[str] = sets_opt,
        preset: str = preset_opt,
        name: str = typer.Option(
            "",
            "--registered-name",
            help="Registered model name in MLflow (default MODEL-DATASET, e.g. vae-digits).",
        ),
        thresholds: str = thresholds_opt,
        tolerance: float = tolerance_opt,
        test_fraction: float = test_fraction_opt,
        profile: str = profile_opt,
        image: str = image_opt,
        retries: int = retries_opt,
        service_account: str = service_account_opt,
        force: bool = force_opt,
    ) -> None:
        """Retrain MODEL on a KFP recurring run (cron or interval); replaces a same-named one
        once the new one is accepted."""
        from genpipe.ops.kfp_schedule import cron_expression, interval_seconds

        if bool(cron) == bool(every):
            raise ConfigError("give exactly one of --cron '0 0 3 * * *' or --every 24h")
        cron_expr = cron_expression(cron) if cron else ""
        seconds = interval_seconds(every) if every else 0
        params = pipeline_params(
            model,
            data,
            preset,
            sets,
            experiment,
            name,
            thresholds,
            tolerance,
            test_fraction,
            force,
            {**CLI_FLAGS, "registered_name": "--registered-name"},
        )
        with tempfile.TemporaryDirectory(prefix="genpipe-schedule-") as tmp:
            # Compile first: a bad profile or image fails before any request to KFP.
            package = _compile(model, profile, image, retries, Path(tmp))
            kfp = _connect(host, token, cookie, namespace)
            pid, vid, vname, uploaded = kfp.ensure_pipeline_version(package)
        exp_id = kfp.experiment_id(params["experiment"])
        sname = schedule_name or f"genpipe-{model}-retrain"
        rid, replaced = kfp.schedule(
            sname, exp_id, pid, vid, params, cron_expr, seconds, service_account
        )
        when = f"cron '{cron_expr}'" if cron_expr else f"every {seconds}s"
        out.print(f"pipeline version: {vname} ({'uploaded' if uploaded else 'unchanged, reused'})")
        out.print(
            f"scheduled {sname} ({rid}) {when}"
            + (f"; replaced {replaced} previous" if replaced else "")
        )

    schedules = typer.Typer(
        help="List, pause, resume or delete recurring runs.", no_args_is_help=True
    )
    app.add_typer(schedules, name="schedules")

    @schedules.command("list")
    def schedules_list(
        host: str = host_opt,
        token: str = token_opt,
        cookie: str = cookie_opt,
        namespace: str = ns_opt,
    ) -> None:
        """List recurring runs."""
        from genpipe.ops.kfp_schedule import describe_trigger

        kfp = _connect(host, token, cookie, namespace)
        table = Table("name", "id", "trigger", "status", "created")
        for r in sorted(kfp.recurring_runs(), key=lambda r: r.display_name or ""):
            table.add_row(
                r.display_name,
                r.recurring_run_id,
                describe_trigger(r),
                str(r.status or r.mode or ""),
                str(r.created_at or ""),
            )
        out.print(table)

    def _by_name(verb: str, done: str) -> None:
        @schedules.command(verb)
        def cmd(
            schedule_name: str = typer.Argument(..., help="Recurring run name."),
            host: str = host_opt,
            token: str = token_opt,
            cookie: str = cookie_opt,
            namespace: str = ns_opt,
        ) -> None:
            kfp = _connect(host, token, cookie, namespace)
            n = getattr(kfp, verb)(schedule_name)
            out.print(f"{done} {schedule_name} ({n} recurring run{'s' if n > 1 else ''})")

        cmd.__doc__ = f"{verb.capitalize()} the recurring run(s) named SCHEDULE_NAME."

    _by_name("pause", "paused")
    _by_name("resume", "resumed")
    _by_name("delete", "deleted")
