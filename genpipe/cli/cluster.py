"""Cluster commands: submit, schedule, schedules, pull, serve, deploy, images.

`submit`/`schedule` compile MODEL's pipeline for a cluster profile, upload it to KFP once per
content (version named by hash) and start a run / a recurring run. `pull`, `serve` and
`deploy` resolve a registered model `NAME@alias` (or `NAME/version`) in MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

import zoo
from zoo.errors import ConfigError, GenpipeError
from zoo.refs import check_image, parse_model_ref

out = Console(soft_wrap=True)  # long URLs and ids stay on one line
err = Console(stderr=True, soft_wrap=True)

IMAGE_VARIANTS = ("cpu", "gpu", "serving")
DEFAULT_REPOSITORY = "ghcr.io/genpipe/genpipe"
PROFILE_HELP = "Cluster profile: cpu | gke | eks | aks | generic-nvidia, or a profile YAML path."


def image_tag(repository: str, variant: str, version: str = "") -> str:
    if variant not in IMAGE_VARIANTS:
        raise ConfigError(f"image variant {variant!r} is not one of {', '.join(IMAGE_VARIANTS)}")
    version = version or zoo.__version__
    if version == "latest":
        raise ConfigError("--version latest: pin a version so runs are reproducible")
    return check_image(f"{repository}:{version}-{variant}", "--repository")


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
) -> dict[str, Any]:
    """The pipeline's runtime parameters, checked locally so a typo fails before any upload.

    `force`: train even when data, config and code equal the champion's (else skipped)."""
    from zoo import models
    from zoo.blessing import parse_thresholds
    from zoo.config import parse_overrides
    from zoo.data.sources import default_registered_name

    overrides = parse_overrides(sets)
    models.resolve_config(model, preset, overrides)
    parse_thresholds(thresholds, models.get(model).default_thresholds, "--thresholds")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction={test_fraction} must be in (0, 1)")
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
        "overrides": json.dumps(overrides, sort_keys=True),
        "experiment": experiment or f"genpipe-{model}",
        "registered_name": name or default_registered_name(model, data),
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
    from genpipe.ops.kfp_client import Kfp, resolve_auth, resolve_host

    return Kfp(resolve_host(host), resolve_auth(token, cookie), namespace)


def _mlflow_version(ref: str) -> tuple[Any, str, str, Any]:
    """(client, name, selector, ModelVersion) for NAME@alias | NAME/version | NAME."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from zoo import registration
    from zoo.settings import ENV_MLFLOW_URI

    name, sel = parse_model_ref(ref)
    # Only the tracking URI: artifacts come through the MLflow proxy, so pull/serve/deploy
    # need no S3 credentials on the user's machine.
    uri = os.environ.get(ENV_MLFLOW_URI, "")
    if not uri:
        raise ConfigError(
            f"{ENV_MLFLOW_URI} is not set: `eval $(genpipe env)` for the embedded stack, or "
            "`kubectl -n genpipe port-forward svc/mlflow 5000:5000` and "
            f"export {ENV_MLFLOW_URI}=http://localhost:5000"
        )
    mlflow.set_tracking_uri(uri)
    c = MlflowClient(uri)
    return c, name, sel, registration.resolve_version(c, name, sel)


def load_registered(ref: str, dest: Path) -> tuple[Any, dict[str, str]]:
    """Download and load NAME@alias into `dest`; (model, info for /healthz)."""
    from zoo import registration
    from zoo.train import load_model

    c, name, sel, version = _mlflow_version(ref)
    registration.download_model_dir(c, name, str(version.version), dest)
    model, meta = load_model(dest)
    info = {
        "model": name,
        "version": str(version.version),
        "ref": sel,
        "family": str(getattr(model, "family", meta.get("family", ""))),
        "architecture": str(meta.get("model", "")),
    }
    return model, info


def register(app: typer.Typer) -> None:  # noqa: C901 (one closure per command)
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
            "", "--registered-name", help="Registered model name in MLflow (default MODEL)."
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
        from genpipe.ops.kfp_client import cron_expression, interval_seconds

        if bool(cron) == bool(every):
            raise ConfigError("give exactly one of --cron '0 0 3 * * *' or --every 24h")
        cron_expr = cron_expression(cron) if cron else ""
        seconds = interval_seconds(every) if every else 0
        params = pipeline_params(
            model, data, preset, sets, experiment, name, thresholds, tolerance, test_fraction, force
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
        from genpipe.ops.kfp_client import describe_trigger

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

    @app.command("pull")
    def pull_cmd(
        ref: str = typer.Argument(..., help="NAME@alias, NAME/version or NAME (= NAME@champion)."),
        output: Path = typer.Option(
            ..., "--output", "-o", help="Directory to write model.keras + config.json."
        ),
        artifacts_destination: str = typer.Option(
            "",
            help="MLflow server's --artifacts-destination (env GENPIPE_MLFLOW_ARTIFACTS_DESTINATION).",
        ),
    ) -> None:
        """Download a registered model (model.keras + config.json) from MLflow."""
        from genpipe.ops.kserve import artifacts_destination as dest_of
        from genpipe.ops.kserve import storage_uri
        from zoo import registration

        c, name, sel, version = _mlflow_version(ref)
        registration.download_model_dir(c, name, str(version.version), output)
        out.print(f"pulled {name} v{version.version} ({sel}) -> {output}")
        out.print(f"mlflow source: {version.source}")
        out.print(
            f"storage URI:   {storage_uri(version.source, dest_of(artifacts_destination), c)}"
        )

    @app.command("serve")
    def serve_cmd(
        ref: str = typer.Argument(..., help="NAME@alias, NAME/version or NAME (= NAME@champion)."),
        port: int = typer.Option(8080, help="Port to listen on."),
        bind: str = typer.Option(
            "127.0.0.1", "--bind", help="Address to bind (0.0.0.0 exposes it to the network)."
        ),
    ) -> None:
        """Serve a registered model over HTTP: GET /healthz, POST /v1/generate."""
        from genpipe.ops.server import serve

        tmp = Path(tempfile.mkdtemp(prefix="genpipe-serve-"))
        try:
            model, info = load_registered(ref, tmp / "model")
            server = serve(model, info, bind, port)
            out.print(f"serving {info['model']} v{info['version']} on {server.url} (Ctrl-C stops)")
            out.print(
                f"  curl -s {server.url}/healthz\n"
                f"  curl -s -X POST {server.url}/v1/generate -H 'Content-Type: application/json' "
                '-d \'{"n": 16, "seed": 0}\' -o samples.png'
            )
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @app.command("deploy")
    def deploy_cmd(
        ref: str = typer.Argument(..., help="NAME@alias, NAME/version or NAME (= NAME@champion)."),
        namespace: str = typer.Option(
            "kubeflow", "--namespace", "-n", help="Namespace of the InferenceService (with KServe)."
        ),
        service_name: str = typer.Option(
            "", "--service-name", help="InferenceService name (default from NAME)."
        ),
        service_account: str = typer.Option(
            "genpipe-kserve", help="ServiceAccount with the S3 credentials Secret."
        ),
        profile: str = typer.Option(
            "cpu",
            help=PROFILE_HELP + " The serving image is CPU-only: no profile adds a GPU; a GPU "
            "profile keeps the predictor off its GPU nodes.",
        ),
        runtime: str = typer.Option(
            "genpipe-mlserver",
            help="KServe ServingRuntime (default genpipe's: k8s/serving/servingruntime.yaml).",
        ),
        artifacts_destination: str = typer.Option(
            "",
            help="MLflow server's --artifacts-destination (env GENPIPE_MLFLOW_ARTIFACTS_DESTINATION).",
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write YAML here (default stdout)."
        ),
    ) -> None:
        """Render the KServe InferenceService for a registered model (pipe into kubectl apply -f -)."""
        from genpipe.ops.kserve import artifacts_destination as dest_of
        from genpipe.ops.kserve import check_runtime, render_inference_service, storage_uri
        from genpipe.ops.kserve import service_name as svc_name
        from pipelines.platform import load_profile

        # Bad options fail before MLflow is asked.
        prof = load_profile(profile)
        check_runtime(runtime)
        c, name, sel, version = _mlflow_version(ref)
        isvc = render_inference_service(
            service_name or svc_name(name),
            storage_uri(version.source, dest_of(artifacts_destination), c),
            namespace=namespace,
            registered_name=name,
            version=str(version.version),
            alias=sel,
            source=version.source,
            service_account=service_account,
            profile=prof,
            runtime=runtime,
        )
        text = yaml.safe_dump(isvc, sort_keys=False)
        if output:
            output.write_text(text)
            err.print(
                f"wrote {output}: {name} v{version.version} -> {isvc['spec']['predictor']['model']['storageUri']}"
            )
        else:
            print(text, end="")

    images = typer.Typer(
        help="Build or push the component images (Docker engine, podman or buildah).",
        no_args_is_help=True,
    )
    app.add_typer(images, name="images")
    builder_opt = typer.Option(
        "auto",
        help="auto (a reachable Docker engine, else podman, else buildah), docker, podman, buildah.",
    )

    def _variants(variant: str) -> list[str]:
        from genpipe.ops.images_build import variants

        have = variants()
        if variant == "all":
            return have
        if variant not in have:
            raise ConfigError(f"--variant {variant!r} is not one of {', '.join([*have, 'all'])}")
        return [variant]

    @images.command("build")
    def images_build(
        variant: str = typer.Option("all", help="cpu, gpu, serving or all."),
        repository: str = typer.Option(
            DEFAULT_REPOSITORY, help="Image repository (registry/name)."
        ),
        version: str = typer.Option("", help=f"Tag version (default {zoo.__version__})."),
        base_image: str = typer.Option(
            "",
            "--base-image",
            help="Base image (default: the Dockerfile's, python:3.11-slim-bookworm pinned by digest).",
        ),
        ca_cert: list[Path] = typer.Option(
            [],
            "--ca-cert",
            help="Extra CA certificate (PEM) for downloads during the build, e.g. a proxy's; repeatable. A build secret: no image layer keeps it.",
        ),
        builder: str = builder_opt,
        push: bool = typer.Option(False, "--push", help="Push after building."),
    ) -> None:
        """Build images/Dockerfile.{cpu,gpu,serving} as REPOSITORY:VERSION-VARIANT."""
        from genpipe.ops.images_build import build_image, detect_builder, push_image

        chosen = _variants(variant)
        tags = [image_tag(repository, v, version) for v in chosen]  # refuse before building
        tool = detect_builder(builder)
        for v, tag in zip(chosen, tags, strict=True):
            image_id = build_image(
                v,
                tag,
                builder=tool,
                version=version or zoo.__version__,
                base_image=base_image,
                ca_certs=ca_cert,
                on_log=lambda line: err.print(line, highlight=False, markup=False),
            )
            out.print(f"built {tag} ({image_id}) with {tool}")
            if push:
                push_image(tool, tag, on_log=lambda line: err.print(line, highlight=False))
                out.print(f"pushed {tag}")

    @images.command("push")
    def images_push(
        variant: str = typer.Option("all", help="cpu, gpu, serving or all."),
        repository: str = typer.Option(
            DEFAULT_REPOSITORY, help="Image repository (registry/name)."
        ),
        version: str = typer.Option("", help=f"Tag version (default {zoo.__version__})."),
        builder: str = builder_opt,
    ) -> None:
        """Push REPOSITORY:VERSION-VARIANT (log in with `docker login` / `podman login` first)."""
        from genpipe.ops.images_build import detect_builder, push_image

        tags = [image_tag(repository, v, version) for v in _variants(variant)]
        tool = detect_builder(builder)
        for tag in tags:
            push_image(tool, tag, on_log=lambda line: err.print(line, highlight=False))
            out.print(f"pushed {tag}")
