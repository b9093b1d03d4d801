"""`genpipe generate NAME[@alias|/version]`: sample from a registered model.

Text models print the prompt and its continuation; image models write a PNG grid (`-o`).
The model directory is downloaded from MLflow and loaded in Keras safe mode, exactly as
the serving wrapper loads it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from genpipe.cli.registry import warm_call


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

        Answered by the warm server when one runs (started by `genpipe up` or a `genpipe
        run`; no TensorFlow import here); otherwise in this process, with TensorFlow's and
        MLflow's own messages in $GENPIPE_HOME/logs/generate-*.log.
        """
        kwargs = {
            "ref": ref,
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
            "n": n,
            "output": str(output) if output is not None else None,
        }
        done = warm_call("pipelines.warm_calls:generate", **kwargs)
        if done is None:  # no warm server: load TensorFlow & co. here
            from genpipe.cli import quiet_libraries
            from pipelines.warm_calls import generate

            with quiet_libraries("generate"):
                done = generate(**kwargs)
        typer.echo(done["result"] if done["family"] == "text" else f"wrote {done['result']}")
