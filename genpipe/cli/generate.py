"""`genpipe generate NAME[@alias|/version]`: sample from a registered model.

Text models print the prompt and its continuation; image models write a PNG grid (`-o`).
The model directory is downloaded from MLflow and loaded in Keras safe mode, exactly as
the serving wrapper loads it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer

from zoo.errors import ConfigError
from zoo.refs import parse_model_ref


def load_registered(ref: str) -> tuple[Any, dict[str, Any]]:
    """Download and load `ref` from the MLflow registry of the running stack."""
    import os

    from genpipe.ops import stack
    from zoo import registration, tracking
    from zoo.train import load_model

    os.environ.update(stack.ensure_up())
    name, version = parse_model_ref(ref)
    c = tracking.client()
    with tempfile.TemporaryDirectory(prefix="genpipe-generate-") as tmp:
        model_dir = tracking.retrying(  # MLflow's artifact API: retried through outages here
            f"download {ref}",
            registration.download_model_dir,
            c,
            name,
            version,
            Path(tmp) / "model",
        )
        return load_model(model_dir)


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
    from zoo import grids as images
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
    output.write_bytes(images.grid_png(samples))  # type: ignore[arg-type]
    return str(output)


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        ref: str = typer.Argument(
            ..., help="Registered model: NAME (= NAME@champion), NAME@ALIAS or NAME/VERSION."
        ),
        prompt: str = typer.Option("\n", "--prompt", "-p", help="Text models: the prompt."),
        max_new_tokens: int = typer.Option(
            200, "--max-new-tokens", help="Text models: characters to generate."
        ),
        temperature: float = typer.Option(
            0.8, "--temperature", "-t", help="Text models: 0 = greedy."
        ),
        top_k: int = typer.Option(
            0, "--top-k", help="Text models: sample among the k most likely (0 = all)."
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same output)."),
        n: int = typer.Option(64, "-n", help="Image models: number of samples in the grid."),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Image models: PNG file to write."
        ),
    ) -> None:
        """Generate from a registered model: print text, or write an image grid with -o.

        TensorFlow's and MLflow's own messages go to $GENPIPE_HOME/logs/generate-*.log.
        """
        from genpipe.cli import quiet_libraries

        with quiet_libraries("generate"):
            model, _ = load_registered(ref)
            result = generate_output(
                model, prompt, max_new_tokens, temperature, top_k, seed, n, output
            )
        if model.family == "text":
            typer.echo(result)
        else:
            typer.echo(f"wrote {result}")
