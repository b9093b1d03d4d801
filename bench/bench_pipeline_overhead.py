"""Benchmark: pipeline overhead = wall time of `genpipe run` minus time inside train + evaluate.

    python bench/bench_pipeline_overhead.py [--model vae] [--set epochs=6] [--data idx:...]

Starts a private embedded stack (SeaweedFS + MLflow on free ports, in a temporary
GENPIPE_HOME; its start-up is reported but not counted: `genpipe run` reuses a running stack),
then times `genpipe run MODEL` as a subprocess, as a user runs it, end to end:
ingest -> train -> evaluate -> register through kfp.local.

  first run  publishes the dataset and trains + caches the evaluation feature extractor
             (once per dataset); reported, not counted in the steady state
  fresh      no warm task server running (e.g. after its idle timeout): the run starts it
             (pipelines.warm), which imports TensorFlow, MLflow and kfp once; tasks are forks
  after-up   `genpipe up` (stack already running: it only starts the warm server in the
             background), then at once `genpipe run`: the first run of a session
  warm       the default, any later run: the server is already running (kept per state dir,
             like the stack; restarted when the code changes)
  cold       GENPIPE_WARM_TASKS=0: kfp.local's own one-fresh-Python-per-task

For each measured run:
  train     `train_wall_s`, logged by the train component: Trainer.run() from first step to
            saved model (includes per-epoch checkpoints and sample images)
  evaluate  `eval_wall_s` + `eval_champion_wall_s`, logged by the evaluate component: the
            evaluation itself (held-out likelihood, sampling, feature-space metrics) and the
            re-scoring of the current champion on the same data
  overhead  wall - train - evaluate: CLI start, task start-up, kfp.local, dataset fetch,
            model build and tracing, MLflow logging, registration, summary
Per-task wall times (from kfp.local's log) show where the overhead goes.

Writes bench/results/pipeline_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, machine, md_table, quiet_tf, write_results  # noqa: E402

_TASK = re.compile(
    r"^(?P<t>\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task|Task) .*?'(?P<task>[\w-]+)'"
    r"(?P<end>.* finished with status)?"
)


def task_walls(log_text: str) -> dict[str, float]:
    """Wall seconds per task from kfp.local's log ('Executing task' to 'finished')."""
    starts: dict[str, datetime] = {}
    out: dict[str, float] = {}
    for line in log_text.splitlines():
        m = _TASK.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if not m:
            continue
        t = datetime.strptime(m["t"], "%H:%M:%S.%f")
        if m["end"] and m["task"] in starts:
            out[m["task"]] = (t - starts[m["task"]]).total_seconds() % 86400
        elif not m["end"]:
            starts[m["task"]] = t
    return out


def one_run(home: Path, model: str, data: str, sets: list[str], warm: bool) -> dict[str, Any]:
    from zoo import tracking

    tag = uuid.uuid4().hex[:8]
    experiment, name = f"bench-overhead-{tag}", f"bench-{model}-{tag}"
    cmd = [sys.executable, "-m", "genpipe", "run", model, "--data", data]
    cmd += [a for s in sets for a in ("--set", s)]
    cmd += ["--experiment", experiment, "--name", name, "--thresholds", "{}"]
    env = {**os.environ, "GENPIPE_HOME": str(home), "GENPIPE_WARM_TASKS": "1" if warm else "0"}
    logs_before = set((home / "logs").glob("run-*.log"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"genpipe run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log = sorted(set((home / "logs").glob("run-*.log")) - logs_before)[-1]
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    m = c.search_runs([exp.experiment_id], max_results=1)[0].data.metrics
    train_s = float(m["train_wall_s"])
    eval_s = float(m["eval_wall_s"]) + float(m.get("eval_champion_wall_s", 0.0))
    r = {
        "mode": "warm" if warm else "cold",
        "wall_s": wall,
        "train_wall_s": train_s,
        "evaluate_s": eval_s,
        "overhead_s": wall - train_s - eval_s,
        "overhead_fraction": (wall - train_s - eval_s) / wall,
        "tasks_s": task_walls(log.read_text(errors="replace")),
        "train_samples_per_s": m.get("train_samples_per_s_overall"),
    }
    r["tasks_s"]["outside tasks (CLI, stack check, kfp.local, summary)"] = wall - sum(
        r["tasks_s"].values()
    )
    print(
        f"{r['mode']}: wall {wall:.1f} s, train {train_s:.1f} s, evaluate {eval_s:.1f} s, "
        f"overhead {r['overhead_s']:.1f} s ({r['overhead_fraction']:.0%})",
        flush=True,
    )
    return r


def run(model: str, data: str, sets: list[str], modes: list[str]) -> dict[str, Any]:
    from genpipe.ops import stack as zstack
    from pipelines import warm

    with tempfile.TemporaryDirectory(prefix="genpipe-bench-overhead-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        t0 = time.perf_counter()
        zstack.up(home, ports=zstack.free_ports())
        stack_up_s = time.perf_counter() - t0
        os.environ.update(zstack.env(home))
        try:
            first = one_run(home, model, data, sets, warm=True)
            runs = []
            for mode in modes:
                if mode in ("fresh", "after-up"):
                    warm.stop_server(home)
                if mode == "after-up":  # not timed: what the user ran before `genpipe run`
                    env = {**os.environ, "GENPIPE_HOME": str(home)}
                    subprocess.run(
                        [sys.executable, "-m", "genpipe", "up"],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                runs.append(one_run(home, model, data, sets, warm=(mode != "cold")))
                runs[-1]["mode"] = mode
        finally:
            zstack.down(home, timeout=5)
            warm.stop_server(home)
    return {
        "machine": machine(),
        "model": model,
        "data": data,
        "sets": sets,
        "stack_up_s": stack_up_s,
        "first_run": first,
        "runs": runs,
    }


def table(r: dict[str, Any]) -> str:
    runs = [("first run (warm)", r["first_run"])] + [(x["mode"], x) for x in r["runs"]]
    rows = []
    for label, x in runs:
        rows.append(
            [
                label,
                x["wall_s"],
                x["train_wall_s"],
                x["evaluate_s"],
                x["overhead_s"],
                f"{x['overhead_fraction']:.1%}",
            ]
        )
    out = md_table(["run", "wall s", "train s", "evaluate s", "overhead s", "overhead"], rows)
    tasks = sorted({t for _, x in runs for t in x["tasks_s"]}, key=lambda t: t.startswith("out"))
    out += "\n" + md_table(
        ["task wall s", *(label for label, _ in runs)],
        [[t, *(x["tasks_s"].get(t, float("nan")) for _, x in runs)] for t in tasks],
    )
    m = r["machine"]
    return out + (
        f"\n`genpipe run {r['model']} --data {r['data']} {' '.join('--set ' + s for s in r['sets'])}`; "
        f"stack start-up {r['stack_up_s']:.1f} s (not counted); "
        f"{m['cpus']} CPUs, load avg {m['load_avg_1m']:.1f}, {m['when']}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vae")
    p.add_argument("--data", default=f"idx:{MNIST_DIR}")
    p.add_argument("--set", action="append", default=None, help="config override (repeatable)")
    p.add_argument(
        "--modes",
        default="fresh,after-up,warm,cold",
        help="measured runs after the first, in order: fresh (warm server started by the run), "
        "after-up (`genpipe up` starts it, the run follows at once), warm (server already "
        "running), cold (GENPIPE_WARM_TASKS=0)",
    )
    args = p.parse_args(argv)
    sets = args.set if args.set is not None else ["epochs=6"]
    result = run(args.model, args.data, sets, [m for m in args.modes.split(",") if m])
    md = table(result)
    out = write_results("pipeline_overhead", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
