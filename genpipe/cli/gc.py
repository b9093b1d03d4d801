"""`genpipe gc`: list, and with --yes delete, what interrupted runs left behind (genpipe.ops.gc)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.console import Console

out = Console()


def register(app: typer.Typer) -> None:
    @app.command("gc")
    def gc_cmd(
        yes: bool = typer.Option(
            False, "--yes", "-y", help="Delete what is listed (default: a dry run)."
        ),
        temp_dir: Path = typer.Option(
            Path(tempfile.gettempdir()), help="Where task temp dirs are looked for."
        ),
    ) -> None:
        """List what interrupted runs left behind; delete it with --yes.

        Checkpoints in the object store of runs that ended (FINISHED, FAILED, KILLED) or are
        gone from MLflow (a FAILED or KILLED run's can still be resumed with `genpipe run
        MODEL ... --resume RUN`: deleting it is your call), and task temp dirs whose process
        is gone. Checkpoints of RUNNING runs are kept. Starts the embedded stack if it is not up.
        """
        import os

        from genpipe.ops import gc, stack
        from zoo import tracking
        from zoo.storage import ObjectStore

        os.environ.update(stack.ensure_up())
        store = ObjectStore.from_env()
        found = gc.survey(store, tracking.client(), temp_dir)
        for item in found.leftovers:  # plain lines: grep-able, never cut to the terminal width
            out.print(
                f"{item.kind:12} {item.where}  {gc.human(item.size)}  ({item.why})",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        total = sum(item.size for item in found.leftovers)
        if found.kept:
            kept = sum(size for _, size in found.kept)
            out.print(
                f"kept: checkpoints of {len(found.kept)} unfinished run(s), {gc.human(kept)} "
                f"({', '.join(run for run, _ in found.kept[:5])}"
                f"{', ...' if len(found.kept) > 5 else ''})",
                highlight=False,
            )
        if not found.leftovers:
            out.print("nothing left behind")
        elif yes:
            freed = gc.remove(store, found.leftovers)
            out.print(f"deleted {len(found.leftovers)} item(s), {gc.human(freed)} freed")
        else:
            out.print(
                f"dry run: {len(found.leftovers)} item(s), {gc.human(total)}; "
                "`genpipe gc --yes` deletes them",
                highlight=False,
            )
