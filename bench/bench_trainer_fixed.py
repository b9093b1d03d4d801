"""Benchmark: the trainer's fixed cost per registered model (issue 14), before vs after.

    python bench/bench_trainer_fixed.py [--before DIR] [--repeats 3] [--models vae,ddpm]

What a pipeline's train task pays inside `zoo.train.train_for_run` on a tiny config, where
the compute is a fraction of a second and the rest is fixed cost: building the model, tracing
the compiled step, checkpoint publishing, the per-epoch sample and saving the model.

Each measurement is a fresh process (`--child`) that first imports what the warm server
preloads (TensorFlow, Keras, zoo.train, the model's module: not counted) and then times one
`train_for_run` on the model's tiny config, with a real RunLogger and object store: a private
embedded stack (SeaweedFS + MLflow on free ports) started for the benchmark. `--before DIR` is
another checkout (e.g. `git worktree add /tmp/before COMMIT`): its children import that
checkout's zoo; variants are interleaved per repeat, so a slow spell of a shared machine falls
on both. Data: the bundled `digits` (image models) and a 20k-character slice of
tiny-shakespeare from ../shared/data (text models); nothing is downloaded.

Reported per model and variant (medians): `call_s` (the whole train_for_run call),
`train_wall_s` (what the trainer logs), `cpu_s` (the process's CPU seconds in the call, less
sensitive to other load), and the first epoch's losses (the numerics must not change). With
GENPIPE_TIMELINE marks in the trainer (after), the seconds between them are printed too.
Writes bench/results/trainer_fixed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAKESPEARE, machine, md_table, quiet_tf, write_results  # noqa: E402

HERE = Path(__file__).resolve().parents[1]


def child(model: str, data_dir: str, out: str) -> None:
    """One measurement: train `model` (tiny) once in this fresh process; JSON to `out`."""
    import importlib

    import keras  # noqa: F401 - preloaded by the warm server: not part of the measurement
    import tensorflow as tf  # noqa: F401

    from zoo import models, timeline, tracking
    from zoo.data import LocalDataset
    from zoo.storage import ObjectStore

    train = importlib.import_module("zoo.train")
    models.get(model)
    c = tracking.client()
    exp = c.get_experiment_by_name("bench-trainer-fixed")
    exp_id = exp.experiment_id if exp else c.create_experiment("bench-trainer-fixed")
    run_id = c.create_run(exp_id, run_name=model).info.run_id
    logger = tracking.RunLogger(c, run_id)
    store = ObjectStore.from_env()
    data = LocalDataset.open(data_dir)
    cfg = models.resolve_config(model, "tiny")
    marks = Path(out).with_suffix(".marks")
    os.environ[timeline.ENV] = str(marks)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as work:
        timeline.mark("call")
        t0, c0 = time.perf_counter(), time.process_time()
        res = train.train_for_run(model, cfg, data, Path(work), store, run_id, logger)
        call_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        timeline.mark("returned")
    c.set_terminated(run_id)
    lines = timeline.read(marks) if marks.exists() else []
    between = {f"{a[2]} -> {b[2]}": b[0] - a[0] for a, b in zip(lines, lines[1:], strict=False)}
    Path(out).write_text(
        json.dumps(
            {
                "call_s": call_s,
                "cpu_s": cpu_s,
                "train_wall_s": res.wall_s,
                "metrics": res.metrics,
                "marks": between,
            }
        )
    )


def measure_one(repo: Path, model: str, data_dir: Path, env: dict[str, str], tmp: Path) -> dict:
    out = tmp / f"{model}-{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", model, str(data_dir), str(out)],
        cwd=repo,
        env={**env, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{repo}: {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def datasets(tmp: Path, text: Path) -> dict[str, Path]:
    """digits and a 20k-character text slice, published to the stack and fetched back."""
    from zoo.data import fetch, load_source, publish, split
    from zoo.storage import ObjectStore

    store = ObjectStore.from_env()
    slice_ = tmp / "shakespeare-20k.txt"
    slice_.write_text(text.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = {}
    for family, source in (("image", "digits"), ("text", f"text:{slice_}")):
        manifest = publish(split(load_source(source)), store, source=source)
        out[family] = fetch(manifest["uri"], store, tmp / f"data-{family}").dir
    return out


def table(medians: dict[str, dict[str, dict[str, float]]], labels: list[str]) -> str:
    header = ["model"]
    for key in ("call_s", "train_wall_s", "cpu_s"):
        header += [f"{key} {lbl}" for lbl in labels]
    if len(labels) == 2:
        header.append("call after/before")
    body = []
    for model, per in medians.items():
        row: list[Any] = [model]
        for key in ("call_s", "train_wall_s", "cpu_s"):
            row += [per[lbl][key] for lbl in labels]
        if len(labels) == 2:
            row.append(f"{per[labels[1]]['call_s'] / per[labels[0]]['call_s']:.2f}x")
        body.append(row)
    return md_table(header, body)


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", type=Path, help="another genpipe checkout to compare against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="", help="comma-separated (default: every registered)")
    p.add_argument("--text", type=Path, default=SHAKESPEARE, help="tiny-shakespeare's input.txt")
    p.add_argument("--child", nargs=3, metavar=("MODEL", "DATA_DIR", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    from genpipe.ops import stack as zstack
    from zoo import models

    names = [m for m in args.models.split(",") if m] or models.names()
    repos = ([("before", args.before.resolve())] if args.before else []) + [("after", HERE)]
    labels = [lbl for lbl, _ in repos]
    samples: dict[str, dict[str, list[dict]]] = {m: {lbl: [] for lbl in labels} for m in names}
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-trainer-") as tmp_s:
        tmp = Path(tmp_s)
        home = tmp / "home"
        home.mkdir()
        zstack.up(home, ports=zstack.free_ports())
        try:
            env = {**os.environ, **zstack.env(home), "GENPIPE_HOME": str(home)}
            os.environ.update(zstack.env(home))
            data = datasets(tmp, args.text)
            for _ in range(args.repeats):
                for model in names:
                    family = models.get(model).family
                    for lbl, repo in repos:
                        r = measure_one(repo, model, data[family], env, tmp)
                        samples[model][lbl].append(r)
                        print(
                            f"{lbl:7} {model:9} call {r['call_s']:6.2f} s  train_wall "
                            f"{r['train_wall_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                            f"loss {r['metrics'].get('train_loss', float('nan')):.6g}",
                            flush=True,
                        )
        finally:
            zstack.down(home, timeout=5)
    keys = ("call_s", "train_wall_s", "cpu_s")
    medians = {
        m: {lbl: {k: statistics.median(r[k] for r in rs) for k in keys} for lbl, rs in d.items()}
        for m, d in samples.items()
    }
    mach = machine()
    md = table(medians, labels) + (
        f"\nmedian of {args.repeats} interleaved repeats, tiny configs; {mach['cpus']} CPUs, "
        f"load avg {mach['load_avg_1m']:.1f}, {mach['when']}.\n"
    )
    # Where the after variant's seconds go (its trainer's timeline marks), per model.
    detail = []
    for m, d in samples.items():
        keys_m = list(d[labels[-1]][0]["marks"])
        for k in keys_m:
            vals = [r["marks"].get(k) for r in d[labels[-1]] if k in r["marks"]]
            detail.append([m, k, statistics.median(vals)])
    if detail:
        md += "\n" + md_table(
            ["model", f"between trainer marks ({labels[-1]})", "median s"], detail
        )
    out = write_results(
        "trainer_fixed", {"machine": mach, "repeats": args.repeats, "samples": samples}, md
    )
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
