"""Registered models in MLflow: `genpipe pull | serve | deploy NAME@alias` (or NAME/version).

The model reference is resolved in the MLflow registry named by MLFLOW_TRACKING_URI; artifacts
come through the MLflow proxy, so no S3 credentials are needed here. (`genpipe generate`, the
fourth registry command, lives in genpipe/cli/generate.py.) `pull` and `serve` run in the
state dir's warm task server when one is running (`warm_call`: this process then imports
neither TensorFlow nor MLflow), else in this process: the same functions,
pipelines.warm_calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from genpipe.cli.options import PROFILE_HELP

out = Console(soft_wrap=True)  # long URLs and ids stay on one line
err = Console(stderr=True, soft_wrap=True)


def warm_call(
    target: str, on_event: Callable[[str, dict[str, Any]], None] | None = None, **kwargs: Any
) -> Any:
    """`target(**kwargs)` (one of pipelines.warm.CALLS) in this state dir's warm server if one
    is running with the current code; None when none is, or it could not take the call
    (nothing ran: the caller runs it itself). With `on_event` the call streams its output
    (pipelines.warm_wire.Zygote.call)."""
    from pipelines import warm
    from zoo.settings import state_dir

    zygote = warm.connect_existing(state_dir())
    if zygote is None:
        return None
    try:
        if on_event is None:
            return zygote.call(target, **kwargs)
        return zygote.call(target, on_event=on_event, **kwargs)
    except warm._Unavailable:  # preload failed or the server went away: nothing ran
        return None
    finally:
        zygote.close()  # after Ctrl-C too: the server then stops what it ran for us


def _print_output(kind: str, fields: dict[str, Any]) -> None:
    """A streamed call's output lines, as they come (other events carry nothing to show)."""
    if kind == "output":
        print(fields["line"], flush=True)


def register(app: typer.Typer) -> None:
    """Add `pull`, `serve` and `deploy` to the `genpipe` app."""

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
        kwargs = {
            "ref": ref,
            "output": str(output),
            "artifacts_destination": artifacts_destination,
        }
        done = warm_call("pipelines.warm_calls:pull", **kwargs)
        if done is None:  # no warm server: import MLflow here
            from pipelines.warm_calls import pull

            done = pull(**kwargs)
        out.print(f"pulled {done['name']} v{done['version']} ({done['ref']}) -> {done['output']}")
        out.print(f"mlflow source: {done['source']}")
        out.print(f"storage URI:   {done['storage_uri']}")

    @app.command("serve")
    def serve_cmd(
        ref: str = typer.Argument(..., help="NAME@alias, NAME/version or NAME (= NAME@champion)."),
        port: int = typer.Option(8080, help="Port to listen on."),
        bind: str = typer.Option(
            "127.0.0.1", "--bind", help="Address to bind (0.0.0.0 exposes it to the network)."
        ),
    ) -> None:
        """Serve a registered model over HTTP: GET /healthz, POST /v1/generate.

        Runs in the warm task server when one is running (a fork of it serves; Ctrl-C here, or
        this command going away, stops it), otherwise in this process.
        """
        kwargs = {"ref": ref, "port": port, "bind": bind}
        try:
            done = warm_call("pipelines.warm_calls:serve", on_event=_print_output, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C: closing our connection stopped the server's fork
            return
        if done is None:  # no warm server: load TensorFlow & co. here
            from pipelines.warm_calls import serve

            serve(**kwargs)

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
        from pipelines.profile import load_profile

        # Bad options fail before MLflow is asked.
        prof = load_profile(profile)
        check_runtime(runtime)
        from pipelines.warm_calls import resolve_registered

        c, name, sel, version = resolve_registered(ref)
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
