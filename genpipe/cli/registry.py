"""Registered models in MLflow: `genpipe pull | serve | deploy NAME@alias` (or NAME/version).

The model reference is resolved in the MLflow registry named by MLFLOW_TRACKING_URI; artifacts
come through the MLflow proxy, so no S3 credentials are needed here. (`genpipe generate`, the
fourth registry command, lives in genpipe/cli/generate.py.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from genpipe.cli.options import PROFILE_HELP
from zoo.errors import ConfigError
from zoo.refs import parse_model_ref

out = Console(soft_wrap=True)  # long URLs and ids stay on one line
err = Console(stderr=True, soft_wrap=True)


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
        from pipelines.profile import load_profile

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
