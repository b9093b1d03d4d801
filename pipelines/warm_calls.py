"""Library calls the `genpipe` CLI runs in the warm server (pipelines.warm.CALLS) or, with
no server running, in its own process: the same function either way, so the output is too.

`generate` downloads a registered model from the stack's own MLflow (authenticated; the model
directory is ours, written by the pipeline's train step) and loads it in Keras safe mode,
exactly as the serving wrapper does: never a pickle from elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.refs import parse_model_ref


def load_registered(ref: str) -> tuple[Any, dict[str, Any]]:
    """Download and load `ref` (NAME, NAME@ALIAS, NAME/VERSION) from the MLflow registry of
    the running stack (started if it is not).

    A registered version's files never change, so its model directory is kept in
    $GENPIPE_HOME/cache/models/ (0700, ours) and the next call only resolves the alias: one
    registry request instead of listing and downloading the ~50 files of the logged model.
    """
    from genpipe.ops import stack
    from zoo import registration, tracking
    from zoo.train import load_model

    os.environ.update(stack.ensure_up())
    name, version = parse_model_ref(ref)
    c = tracking.client()
    found = tracking.retrying(
        f"resolve {ref}", registration.resolve_version, c, name, version
    )  # raises GenpipeError naming the model when there is no such version or alias
    cached = _cache_dir(name, str(found.version), str(found.source))
    if not (cached / "model.keras").is_file():
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cached.parent) as tmp:
            model_dir = tracking.retrying(  # MLflow's artifact API: retried through outages
                f"download {ref}",
                registration.download_model_dir,
                c,
                name,
                str(found.version),
                Path(tmp) / "model",
            )
            with contextlib.suppress(OSError):  # another call cached it meanwhile: keep that
                os.replace(model_dir, cached)
    return load_model(cached)


def _cache_dir(name: str, version: str, source: str) -> Path:
    """Where version `version` of `name` (logged at `source`) is kept: a private dir of ours."""
    from zoo.settings import state_dir

    root = state_dir() / "cache" / "models"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_uid != os.getuid():  # someone else's files would be loaded as ours
        raise ConfigError(f"{root} belongs to uid {root.stat().st_uid}, not to you: remove it")
    os.chmod(root, 0o700)
    digest = hashlib.sha256(f"{name}|{version}|{source}".encode()).hexdigest()[:32]
    return root / digest


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
    model, _ = load_registered(ref)
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
