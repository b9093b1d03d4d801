"""Benchmark: pipeline overhead = wall time of `genpipe run` minus time inside train + evaluate.

    python bench/bench_pipeline_overhead.py [--model vae] [--set epochs=2] [--data idx:...]

Starts a private embedded stack (SeaweedFS + MLflow on free ports, in a temporary
GENPIPE_HOME; its start-up is reported but not counted: `genpipe run` reuses a running stack),
then times `genpipe run MODEL` as a subprocess, as a user runs it, end to end:
ingest -> train -> evaluate -> register through kfp.local.

  train     `train_wall_s`, logged by the train component: Trainer.run() from first step to
            saved model (includes per-epoch checkpoints and sample images)
  evaluate  the evaluation compute (zoo.evaluation.evaluate on the held-out split), timed
            here in-process on the registered model and the same split
  overhead  wall - train - evaluate: CLI start, kfp.local, one Python process + TensorFlow
            import per component (4x), dataset publish/fetch, MLflow logging, registration

Writes bench/results/pipeline_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, image_local_dataset, machine, md_table, quiet_tf, write_results  # noqa: E402


def run(model: str, data: str, sets: list[str]) -> dict[str, Any]:
    from zoo import registration, tracking
    from zoo import stack as zstack
    from zoo.evaluation import evaluate
    from zoo.train import load_model

    with tempfile.TemporaryDirectory(prefix="genpipe-bench-overhead-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        t0 = time.perf_counter()
        zstack.up(home, ports=zstack.free_ports())
        stack_up_s = time.perf_counter() - t0
        try:
            env = {**os.environ, **zstack.env(home), "GENPIPE_HOME": str(home)}
            os.environ.update(zstack.env(home))
            tag = uuid.uuid4().hex[:8]
            experiment, name = f"bench-overhead-{tag}", f"bench-{model}-{tag}"
            cmd = [sys.executable, "-m", "zoo", "run", model, "--data", data]
            cmd += [a for s in sets for a in ("--set", s)]
            cmd += ["--experiment", experiment, "--name", name, "--thresholds", "{}"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(
                    f"genpipe run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                )
            c = tracking.client()
            exp = c.get_experiment_by_name(experiment)
            run_ = c.search_runs([exp.experiment_id], max_results=1)[0]
            m = run_.data.metrics
            train_s = float(m["train_wall_s"])
            print(f"genpipe run wall {wall:.1f} s, train_wall_s {train_s:.1f} s", flush=True)
            version = c.search_model_versions(f"name='{name}'")
            src = Path(tmp) / "model"
            if version:
                model_dir = registration.download_model_dir(c, name, version[0].version, src)
            else:  # not blessed: the model is still logged with the run
                import mlflow

                model_dir = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run_.info.run_id, artifact_path="model", dst_path=str(src)
                    )
                )
                model_dir = next(p.parent for p in model_dir.rglob("config.json"))
            loaded, _ = load_model(model_dir)
            local = image_local_dataset(Path(tmp) / "data", data if data != "digits" else "digits")
            evaluate(loaded, local, seed=0)  # warm-up: tracing is part of the component, not steady
            t0 = time.perf_counter()
            evaluate(loaded, local, seed=0)
            eval_s = time.perf_counter() - t0
        finally:
            zstack.down(home, timeout=5)
    overhead = wall - train_s - eval_s
    return {
        "machine": machine(),
        "model": model,
        "data": data,
        "sets": sets,
        "stack_up_s": stack_up_s,
        "wall_s": wall,
        "train_wall_s": train_s,
        "evaluate_s": eval_s,
        "overhead_s": overhead,
        "overhead_fraction": overhead / wall,
        "train_steps_per_s": m.get("train_samples_per_s_overall"),
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ["`genpipe run` wall", r["wall_s"], "100%"],
        [
            "inside train (train_wall_s)",
            r["train_wall_s"],
            f"{r['train_wall_s'] / r['wall_s']:.0%}",
        ],
        ["inside evaluate (compute)", r["evaluate_s"], f"{r['evaluate_s'] / r['wall_s']:.0%}"],
        ["overhead", r["overhead_s"], f"{r['overhead_fraction']:.0%}"],
        ["(not counted) stack start-up", r["stack_up_s"], ""],
    ]
    m = r["machine"]
    return md_table(["part", "seconds", "share"], rows) + (
        f"\n`genpipe run {r['model']} --data {r['data']} {' '.join('--set ' + s for s in r['sets'])}`; "
        f"{m['cpus']} CPUs, load avg {m['load_avg_1m']:.1f}, {m['when']}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vae")
    p.add_argument("--data", default=f"idx:{MNIST_DIR}")
    p.add_argument("--set", action="append", default=None, help="config override (repeatable)")
    args = p.parse_args(argv)
    sets = args.set if args.set is not None else ["epochs=2"]
    result = run(args.model, args.data, sets)
    md = table(result)
    out = write_results("pipeline_overhead", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
