"""Library calls the `genpipe` CLI runs in the warm server (pipelines.warm.CALLS) or, with
no server running, in its own process: the same function either way, so the output is too.

`generate`, `pull` and `serve` resolve a registered model in the MLflow registry at
MLFLOW_TRACKING_URI (`generate` first points it at the embedded stack, started if need be);
artifacts come through MLflow's proxy, so `pull` and `serve` need no S3 credentials and work
against a cluster's MLflow through a port-forward. The model directory is ours (written by
the pipeline's train step) and is loaded in Keras safe mode, exactly as the serving wrapper
does: never a pickle from elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.refs import parse_model_ref


def resolve_registered(ref: str) -> tuple[Any, str, str, Any]:
    """(client, name, alias or version, ModelVersion) of NAME@alias | NAME/version | NAME in
    the registry at MLFLOW_TRACKING_URI (its calls retried through outages, one-line errors).
    """
    from zoo import registration, tracking
    from zoo.settings import ENV_MLFLOW_URI, Settings

    name, sel = parse_model_ref(ref)
    uri = os.environ.get(ENV_MLFLOW_URI, "")
    if not uri:
        raise ConfigError(
            f"{ENV_MLFLOW_URI} is not set: `eval $(genpipe env)` for the embedded stack, or "
            "`kubectl -n genpipe port-forward svc/mlflow 5000:5000` and "
            f"export {ENV_MLFLOW_URI}=http://localhost:5000"
        )
    # Only the tracking URI: the registry and MLflow's artifact proxy need no object store.
    c = tracking.client(
        Settings(s3_endpoint="", access_key="", secret_key="", bucket="", mlflow_uri=uri)
    )
    found = tracking.retrying(f"resolve {ref}", registration.resolve_version, c, name, sel)
    return c, name, sel, found  # resolve_version raises GenpipeError naming a missing one


def load_registered(ref: str, cache: bool = True) -> tuple[Any, dict[str, str]]:
    """Download and load `ref` from the registry at MLFLOW_TRACKING_URI: (model, info for
    `genpipe serve`'s /healthz: model, version, ref, family, architecture).

    A registered version's files never change, so with `cache` its model directory is kept
    in $GENPIPE_HOME/cache/models/ (0700, ours; keyed by tracking URI, name, version and
    source) and the next call only resolves the alias: one registry request instead of
    listing and downloading the ~50 files of the logged model. Without, it is downloaded
    into a temporary dir, removed once loaded.
    """
    from zoo import registration, tracking
    from zoo.train import load_model

    c, name, sel, found = resolve_registered(ref)
    version = str(found.version)
    with contextlib.ExitStack() as cleanup:
        if cache:
            model_dir = _cache_dir(c.tracking_uri, name, version, str(found.source))
            parent = model_dir.parent
        else:
            parent = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="genpipe-")))
            model_dir = parent / "model"
        if not (model_dir / "model.keras").is_file():
            with tempfile.TemporaryDirectory(prefix=".download-", dir=parent) as tmp:
                downloaded = tracking.retrying(  # MLflow's artifact API: retried through outages
                    f"download {ref}",
                    registration.download_model_dir,
                    c,
                    name,
                    version,
                    Path(tmp) / "model",
                )
                with contextlib.suppress(OSError):  # another call cached it meanwhile: keep that
                    os.replace(downloaded, model_dir)
        model, meta = load_model(model_dir)
    info = {
        "model": name,
        "version": version,
        "ref": sel,
        "family": str(getattr(model, "family", meta.get("family", ""))),
        "architecture": str(meta.get("model", "")),
    }
    return model, info


def _cache_dir(uri: str, name: str, version: str, source: str) -> Path:
    """Where version `version` of `name` (logged at `source` in the registry at `uri`) is
    kept: a private dir of ours."""
    from zoo.settings import state_dir

    root = state_dir() / "cache" / "models"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_uid != os.getuid():  # someone else's files would be loaded as ours
        raise ConfigError(f"{root} belongs to uid {root.stat().st_uid}, not to you: remove it")
    os.chmod(root, 0o700)
    digest = hashlib.sha256(f"{uri}|{name}|{version}|{source}".encode()).hexdigest()[:32]
    return root / digest


def pull(ref: str, output: str, artifacts_destination: str = "") -> dict[str, str]:
    """`genpipe pull`: the model directory (model.keras + config.json) of `ref` into `output`
    (relative to the caller's working directory); what the CLI prints about it."""
    from genpipe.ops.kserve import artifacts_destination as destination_of
    from genpipe.ops.kserve import storage_uri
    from zoo import registration, tracking

    c, name, sel, found = resolve_registered(ref)
    tracking.retrying(
        f"download {ref}",
        registration.download_model_dir,
        c,
        name,
        str(found.version),
        Path(output),
    )
    return {
        "name": name,
        "version": str(found.version),
        "ref": sel,
        "output": output,
        "source": str(found.source),
        "storage_uri": storage_uri(found.source, destination_of(artifacts_destination), c),
    }


def serve(
    ref: str,
    port: int = 8080,
    bind: str = "127.0.0.1",
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, str]:
    """`genpipe serve`: load `ref` (no cache: any MLflow, by its URI alone) and serve it over
    HTTP until SIGINT/SIGTERM (or, in the warm server, until the CLI goes away, which kills
    this process). `on_event` is the warm server's: its presence means our output streams to
    the CLI, which prints it."""
    from genpipe.ops.server import serve as bind_server

    del on_event  # what we print reaches the CLI as it happens (a streamed call)
    model, info = load_registered(ref, cache=False)
    server = bind_server(model, info, bind, port)
    print(f"serving {info['model']} v{info['version']} on {server.url} (Ctrl-C stops)")
    print(
        f"  curl -s {server.url}/healthz\n"
        f"  curl -s -X POST {server.url}/v1/generate -H 'Content-Type: application/json' "
        '-d \'{"n": 16, "seed": 0}\' -o samples.png',
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.stdout.flush()
    return {"url": server.url}


def generate_output(
    model: Any,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
    n: int,
    output: Path | None,
) -> str:
    """Generate with a loaded model; returns the text (text models) or the PNG path written."""
    from zoo import grids
    from zoo.serving import generate_from_request

    if model.family == "text":
        request = {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
        }
        return generate_from_request(model, request)  # type: ignore[return-value]
    if output is None:
        raise ConfigError("image models write a PNG grid: pass -o/--output PATH.png")
    samples = generate_from_request(model, {"n": n, "seed": seed})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(grids.grid_png(samples))  # type: ignore[arg-type]
    return str(output)


def generate(
    ref: str,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
    n: int = 64,
    output: str | None = None,
) -> dict[str, str]:
    """`genpipe generate`: {"family": "text"|"image", "result": the text or the PNG path}.

    JSON in, JSON out (it crosses the warm server's socket); a relative `output` is relative
    to the caller's working directory (the server's child runs there).
    """
    from genpipe.ops import stack

    os.environ.update(stack.ensure_up())  # generate reads the embedded stack's registry
    model, _ = load_registered(ref, cache=True)
    result = generate_output(
        model,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        seed,
        n,
        Path(output) if output is not None else None,
    )
    return {"family": str(model.family), "result": result}
