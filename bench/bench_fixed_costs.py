"""Benchmark: the fixed costs a user feels (issue 14), before vs after, interleaved.

    python bench/bench_fixed_costs.py [--before DIR] [--repeats 3] [--text input.txt]
    python bench/bench_fixed_costs.py --timeline [--repeats 5]

`--before DIR` is another checkout of genpipe (e.g. `git worktree add /tmp/before COMMIT`);
without it only this checkout is measured. Each variant gets its own private embedded stack
(temporary GENPIPE_HOME, free ports; start-up not counted) and runs `python -m genpipe` with
its own code (cwd and PYTHONPATH = the checkout), as a user runs it. Setup (not counted): a
tiny VAE on `digits` and a tiny char_rnn on a 20k-character slice of tiny-shakespeare, run
through the pipeline and registered. Then, per repeat, every variant in turn (so a slow spell
of this shared VM falls on all of them):

  run (warm)      `genpipe run vae --preset tiny --force`, the warm server already running
  run (after-up)  warm server stopped, `genpipe up` (timed on its own row: it starts the
                  warm server and, since 9bf5bf9, waits for its imports), then at once the
                  same run: the first run of a session
  generate text   `genpipe generate CHAR@champion --max-new-tokens 200 --seed 0`, server up
  generate image  `genpipe generate VAE@champion -n 64 --seed 0 -o grid.png`, server up
  generate cold   the text one with GENPIPE_WARM_TASKS=0 (no warm server used)

Overhead of a run = its wall time - train_wall_s - eval_wall_s - eval_champion_wall_s (what
the components log: time inside the trainer and the evaluation); tiny configs, so the fixed
costs dominate. Reports medians over the repeats and the before/after ratio. Nothing is
downloaded. Writes bench/results/fixed_costs.json and .md.

`--timeline` instead prints where a warm run's seconds go: the median time between the
zoo.timeline marks (GENPIPE_TIMELINE) of the CLI, the server's fork and each task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAKESPEARE, machine, md_table, quiet_tf, write_results  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
LOOSE = {"vae": '{"test_neg_elbo": {"max": 1e9}}', "char_rnn": '{"val_loss": {"max": 1e9}}'}


class Variant:
    """One checkout of genpipe with its own embedded stack."""

    def __init__(self, label: str, repo: Path, tmp: Path) -> None:
        from genpipe.ops import stack as zstack

        self.label, self.repo = label, repo
        self.home = tmp / label / "home"
        self.home.mkdir(parents=True)
        zstack.up(self.home, ports=zstack.free_ports())
        self.env = {
            **os.environ,
            **zstack.env(self.home),
            "GENPIPE_HOME": str(self.home),
            "PYTHONPATH": str(repo),
        }
        # As a user's shell runs it: Python caches the compiled modules (where this machine's
        # environment turns that off, each CLI start compiled ~10 of our modules again).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.tag = uuid.uuid4().hex[:6]

    def genpipe(self, *args: str, extra_env: dict[str, str] | None = None) -> tuple[float, str]:
        """Wall seconds and stdout of `python -m genpipe ARGS` in this checkout."""
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "genpipe", *args],
            cwd=self.repo,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 3):
            raise RuntimeError(f"{self.label}: genpipe {' '.join(args)} failed:\n{proc.stderr}")
        return wall, proc.stdout

    def run(self, model: str, data: str, experiment: str, name: str) -> dict[str, float]:
        args = ["run", model, "--data", data, "--preset", "tiny", "--force"]
        args += ["--experiment", experiment, "--name", name, "--thresholds", LOOSE[model]]
        wall, _ = self.genpipe(*args)
        m = self.metrics(experiment)
        inside = m["train_wall_s"] + m["eval_wall_s"] + m.get("eval_champion_wall_s", 0.0)
        return {"wall_s": wall, "inside_s": inside, "overhead_s": wall - inside}

    def metrics(self, experiment: str) -> dict[str, float]:
        from mlflow import MlflowClient

        saved = {k: os.environ.get(k) for k in self.env if k.startswith(("MLFLOW_", "AWS_"))}
        os.environ.update({k: v for k, v in self.env.items() if k in saved})
        try:
            c = MlflowClient()
            exp = c.get_experiment_by_name(experiment)
            runs = c.search_runs([exp.experiment_id], max_results=1, order_by=["start_time DESC"])
            return dict(runs[0].data.metrics)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop_warm(self) -> None:
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from pathlib import Path; from pipelines import warm; "
                f"warm.stop_server(Path({str(self.home)!r}))",
            ],
            cwd=self.repo,
            env=self.env,
            check=True,
        )

    def down(self) -> None:
        from genpipe.ops import stack as zstack

        try:
            self.stop_warm()
        finally:
            zstack.down(self.home, timeout=5)


def measure(variants: list[Variant], repeats: int, text: str, out_dir: Path) -> dict[str, Any]:
    names = {v.label: (f"vae-fc-{v.tag}", f"char-fc-{v.tag}") for v in variants}
    for v in variants:  # setup: register both models, start the warm server (not counted)
        vae, char = names[v.label]
        v.run("vae", "digits", f"fc-vae-{v.tag}", vae)
        v.run("char_rnn", text, f"fc-char-{v.tag}", char)
        v.genpipe("up")
    rows: dict[str, dict[str, list[float]]] = {v.label: {} for v in variants}

    def add(v: Variant, key: str, value: float) -> None:
        rows[v.label].setdefault(key, []).append(value)
        print(f"{v.label:8} {key:32} {value:7.2f} s", flush=True)

    for _ in range(repeats):
        for v in variants:
            vae, char = names[v.label]
            gen_text = [f"{char}@champion", "--max-new-tokens", "200", "--seed", "0"]
            add(v, "generate text 200 chars (warm)", v.genpipe("generate", *gen_text)[0])
            png = str(out_dir / f"{v.label}-grid.png")
            gen_img = ["generate", f"{vae}@champion", "-n", "64", "--seed", "0", "-o", png]
            add(v, "generate 64 images (warm)", v.genpipe(*gen_img)[0])
            cold = {"GENPIPE_WARM_TASKS": "0"}
            add(
                v,
                "generate text (no warm server)",
                v.genpipe("generate", *gen_text, extra_env=cold)[0],
            )
            r = v.run("vae", "digits", f"fc-vae-{v.tag}", vae)
            add(v, "run overhead (warm)", r["overhead_s"])
            add(v, "run wall (warm)", r["wall_s"])
            v.stop_warm()
            # What the user ran before. Since 9bf5bf9 `up` returns once the warm server has
            # preloaded, so part of what the first run waited for moved here: shown apart.
            add(v, "up (stack running, no warm server)", v.genpipe("up")[0])
            r = v.run("vae", "digits", f"fc-vae-{v.tag}", vae)
            add(v, "run overhead (after up)", r["overhead_s"])
            add(v, "run wall (after up)", r["wall_s"])
    medians = {lbl: {k: statistics.median(x) for k, x in d.items()} for lbl, d in rows.items()}
    return {"machine": machine(), "repeats": repeats, "samples": rows, "medians": medians}


def timeline(v: Variant, repeats: int, out_dir: Path) -> str:
    """Where a warm run's seconds go: `repeats` warm tiny VAE runs with GENPIPE_TIMELINE set
    (zoo.timeline marks in the CLI, the server's fork and each task); the median seconds
    between consecutive marks, in the order they happen."""
    from zoo import timeline as tl

    name = f"vae-fc-{v.tag}"
    v.run("vae", "digits", f"fc-vae-{v.tag}", name)  # setup: the server warm, a champion
    steps: dict[str, list[float]] = {}
    walls = []
    for i in range(repeats):
        path = out_dir / f"timeline-{i}.txt"
        v.env[tl.ENV] = str(path)
        try:
            t0 = time.time()
            v.run("vae", "digits", f"fc-vae-{v.tag}", name)
            t1 = time.time()
        finally:
            del v.env[tl.ENV]
        marks = [(t0, "launch")] + [(t, lbl) for t, _, lbl in tl.read(path)] + [(t1, "exit")]
        walls.append(t1 - t0)
        for j in range(1, len(marks)):
            key = f"{j:02d} {marks[j - 1][1]} -> {marks[j][1]}"
            steps.setdefault(key, []).append(marks[j][0] - marks[j - 1][0])
    body = [[k[3:], statistics.median(x)] for k, x in steps.items()]
    body.append(["whole run (wall)", statistics.median(walls)])
    m = machine()
    return md_table(["between marks", "median s"], body) + (
        f"\nmedian of {repeats} warm runs of the tiny VAE; {m['cpus']} CPUs, "
        f"load avg {m['load_avg_1m']:.1f}, {m['when']}.\n"
    )


def table(r: dict[str, Any]) -> str:
    labels = list(r["medians"])
    keys = list(next(iter(r["medians"].values())))
    header = ["median s", *labels]
    if len(labels) == 2:
        header.append(f"{labels[1]} / {labels[0]}")
    body = []
    for k in keys:
        row: list[Any] = [k, *(r["medians"][lbl][k] for lbl in labels)]
        if len(labels) == 2:
            row.append(f"{r['medians'][labels[1]][k] / r['medians'][labels[0]][k]:.2f}x")
        body.append(row)
    m = r["machine"]
    return md_table(header, body) + (
        f"\nmedian of {r['repeats']} interleaved repeats; {m['cpus']} CPUs, "
        f"load avg {m['load_avg_1m']:.1f}, {m['when']}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", type=Path, help="another genpipe checkout to compare against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--text", type=Path, default=SHAKESPEARE, help="tiny-shakespeare's input.txt")
    p.add_argument(
        "--timeline",
        action="store_true",
        help="only this checkout: where a warm run's seconds go (zoo.timeline marks)",
    )
    args = p.parse_args(argv)
    if args.timeline:
        with tempfile.TemporaryDirectory(prefix="genpipe-bench-timeline-") as tmp:
            v = Variant("after", HERE, Path(tmp))
            try:
                print(timeline(v, args.repeats, Path(tmp)))
            finally:
                v.down()
        return
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-fixed-") as tmp:
        text = Path(tmp) / "shakespeare-20k.txt"
        text.write_text(args.text.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
        repos = ([("before", args.before.resolve())] if args.before else []) + [("after", HERE)]
        variants: list[Variant] = []
        try:
            for label, repo in repos:
                variants.append(Variant(label, repo, Path(tmp)))
            result = measure(variants, args.repeats, f"text:{text}", Path(tmp))
        finally:
            for v in variants:
                v.down()
    md = table(result)
    out = write_results("fixed_costs", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
