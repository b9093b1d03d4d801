"""Benchmark: training throughput of our trainer vs plain Keras `fit`, for every registered model.

    python bench/bench_train.py [--models vae,dcgan] [--steps 30] [--epochs 3] [--no-xla]
                                [--steps-per-call 10] [--repeats 3]

Side by side, per model, with the model's default config (same architecture, same global
batch, same number of optimizer steps, same examples):

  ours      zoo.train.Trainer.run() on one device: cached, parallel-interleaved TFRecord input,
            tf.function step via strategy.run, per-epoch seeded shuffling.
  ours+spc  the same with `steps_per_call` optimizer steps per compiled call (default 10):
            one host sync per call instead of per step.
  ours+xla  the same as `ours` with `jit_compile=True` (XLA) on the train step.
  fit       the plain-Keras baseline: a keras.Model wrapper whose `train_step` runs the model's
            own loss and optimizer update (`train_step_replica`, the same layers and math) and
            is trained with `model.fit` on in-memory numpy arrays of the same examples, with
            Keras's default input handling (shuffle=True), verbose=0 (no progress-bar cost).

Throughput is samples/s (tokens/s for text models = samples/s x context length), the median
over the epochs after the first (the first includes tracing). The variants of one model run
*interleaved*, epoch by epoch: each in its own process, which trains one epoch when this one
says "go" and then waits on its stdin, in turn (round robin). Exactly one trains at a time, a
slow or fast spell of this shared machine (seen to swing one variant's epochs by 30% within
seconds) hits all of them alike, and hand-overs happen outside the timed epochs. (Threads in
one process were tried first: with three or more models alive, one variant ran 2x slower in
every epoch, a different one each run.)
Writes bench/results/train.json and train.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset_for, machine, md_table, quiet_tf, write_results  # noqa: E402


def _config(name: str, steps: int, epochs: int, overrides: dict[str, Any]) -> Any:
    from zoo import models

    return models.resolve_config(
        name,
        "default",
        {"steps_per_epoch": steps, "epochs": epochs, "distribution": "single", **overrides},
    )


def measure_ours(
    name: str,
    cfg: Any,
    data: Any,
    workdir: Path,
    jit: bool,
    steps_per_call: int = 1,
    between_epochs: Any = None,
    per_epoch: list[float] | None = None,
) -> float:
    """Median samples/s of our trainer's epochs after the first (each epoch's figure is
    appended to `per_epoch` when given)."""
    from zoo.train import Trainer

    cfg = dataclasses.replace(cfg, jit_compile=jit, steps_per_call=steps_per_call)
    per_epoch = [] if per_epoch is None else per_epoch

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        per_epoch.append(metrics["train_samples_per_s"])
        if between_epochs:
            between_epochs()  # after the epoch's timing: the next epoch's clock starts later

    Trainer(name, cfg, data, workdir, on_epoch=on_epoch).run()
    return statistics.median(per_epoch[1:])


def _numpy_examples(model: Any, data: Any, batch: int, steps: int) -> dict[str, Any]:
    """The first `steps` batches of the model's own training stream, as numpy arrays."""
    import numpy as np

    ds = model.make_dataset(data, "train", batch, shuffle=True, seed=0, drop_remainder=True)
    parts: dict[str, list[Any]] = {}
    for b in ds.take(steps):
        for k, v in b.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def measure_fit(
    name: str,
    cfg: Any,
    data: Any,
    between_epochs: Any = None,
    jit_compile: bool = False,
    per_epoch: list[float] | None = None,
) -> float:
    """Median samples/s of plain `fit` on numpy arrays over the epochs after the first (each
    epoch's figure is appended to `per_epoch` when given).

    `jit_compile` is passed explicitly: Keras's default ("auto") turns XLA on whenever a GPU
    is visible, which would make the GPU baseline a different step than ours without XLA."""
    import keras
    import tensorflow as tf

    from zoo import models
    from zoo.train import data_spec_from_manifest

    keras.utils.set_random_seed(cfg.seed)
    inner = models.get(name)(cfg, data_spec_from_manifest(data.manifest, data))
    inner.build_model()
    optimizers = inner.make_optimizers()
    batch = cfg.batch_size

    class FitBaseline(keras.Model):
        """What a Keras user writes: a custom train_step, trained with fit()."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False)

        def train_step(self, data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            out = self.inner.train_step_replica(data, optimizers, batch, self.step)
            self.step.assign_add(1)
            return out

    wrapper = FitBaseline()
    wrapper.built = True
    wrapper.compile(jit_compile=jit_compile)
    x = _numpy_examples(inner, data, batch, cfg.steps_per_epoch)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.t0)
            if between_epochs:
                between_epochs()

    wrapper.fit(
        x, batch_size=batch, epochs=cfg.epochs, shuffle=True, verbose=0, callbacks=[Timer()]
    )
    n = next(iter(x.values())).shape[0]
    if per_epoch is not None:
        per_epoch.extend(n / t for t in times)
    return statistics.median(n / t for t in times[1:])


_MARK = "genpipe-bench-train"


def interleaved(specs: dict[str, dict[str, Any]], logdir: Path) -> tuple[dict, dict]:
    """Run each variant in its own process, one epoch at a time in turn (round robin): a
    process runs only between our "go" and its end-of-epoch line, and waits on its stdin
    otherwise. Separate processes: no TensorFlow thread pool or Python state is shared.
    Returns (samples/s, errors) by variant."""
    procs: dict[str, subprocess.Popen] = {}
    for key, spec in specs.items():
        with open(logdir / f"{key}.log", "w") as log:
            procs[key] = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps({**spec, "variant": key})],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
    results: dict[str, float] = {}
    errors: dict[str, str] = {}
    live = list(procs)
    while live:
        for key in list(live):
            proc = procs[key]
            assert proc.stdin and proc.stdout
            proc.stdin.write("go\n")
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                if not line:  # exited without a result
                    tail = (logdir / f"{key}.log").read_text().strip().splitlines()[-1:]
                    errors[key] = f"exit {proc.wait()}: {tail[0][:200] if tail else ''}"
                    live.remove(key)
                    break
                if line.startswith(f"{_MARK} epoch"):
                    break
                if line.startswith(f"{_MARK} result "):
                    out = json.loads(line.split(" ", 2)[2])
                    if "value" in out:
                        results[key] = out["value"]
                    else:
                        errors[key] = out["error"]
                    proc.stdin.close()
                    proc.wait()
                    live.remove(key)
                    break
    return results, errors


def child(spec: dict[str, Any]) -> None:
    """One variant of one model, in its own process, epochs gated by the parent's "go"."""
    sys.stdin.readline()  # even imports wait for our first turn: nothing else runs meanwhile
    quiet_tf()
    name, variant = spec["model"], spec["variant"]

    def between_epochs() -> None:
        print(f"{_MARK} epoch", flush=True)
        sys.stdin.readline()

    try:
        data = dataset_for(name, Path(spec["datadir"]))
        cfg = _config(name, spec["steps"], spec["epochs"], spec["overrides"])
        work = Path(spec["workdir"])
        if variant == "fit":
            value = measure_fit(name, cfg, data, between_epochs)
        else:
            jit = variant == "ours_xla"
            spc = spec["steps_per_call"] if variant == "ours_spc" else 1
            value = measure_ours(name, cfg, data, work, jit, spc, between_epochs)
        out: dict[str, Any] = {"value": value}
    except Exception as e:
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    print(f"{_MARK} result {json.dumps(out)}", flush=True)


def _unit(name: str, cfg: Any) -> tuple[str, int]:
    from zoo import models

    if models.get(name).family == "text":
        return "tokens/s", int(cfg.nchars)
    return "samples/s", 1


def run(
    names: list[str],
    steps: int,
    epochs: int,
    xla: bool,
    overrides: dict[str, dict[str, Any]],
    steps_per_call: int = 10,
    repeats: int = 1,
) -> dict[str, Any]:
    rows = []
    at_start = machine()
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-train-") as tmp:
        for name in names:
            row: dict[str, Any] = {"model": name}
            try:
                dataset_for(name, Path(tmp))  # written once here; the variants read it
                cfg = _config(name, steps, epochs, overrides.get(name, {}))
                unit, mult = _unit(name, cfg)
                row.update(unit=unit, batch_size=cfg.batch_size, steps_per_epoch=steps)
                spec = {
                    "model": name,
                    "steps": steps,
                    "epochs": epochs,
                    "overrides": overrides.get(name, {}),
                    "steps_per_call": steps_per_call,
                    "datadir": tmp,
                }
                keys = ["ours", "fit"]
                keys += ["ours_spc"] if steps_per_call > 1 else []
                keys += ["ours_xla"] if xla else []
                per_repeat: dict[str, list[float]] = {}
                errors: dict[str, str] = {}
                for r in range(repeats):
                    logdir = Path(tmp) / f"{name}-logs-{r}"
                    logdir.mkdir()
                    specs = {
                        k: {**spec, "workdir": str(Path(tmp) / f"{name}-{k}-{r}")} for k in keys
                    }
                    values, errs = interleaved(specs, logdir)
                    errors.update(errs)
                    for k, v in values.items():
                        per_repeat.setdefault(k, []).append(v * mult)
                # Median over repeats: a whole process that runs slow (seen: one variant at
                # half speed in all its epochs, a different one each run) is outvoted.
                values = {k: statistics.median(v) for k, v in per_repeat.items()}
                row.update(values)
                row["repeats"] = {k: [round(x, 1) for x in v] for k, v in per_repeat.items()}
                if "ours" not in values or "fit" not in values:
                    raise RuntimeError("; ".join(f"{k}: {e}" for k, e in errors.items()))
                row["speedup"] = row["ours"] / row["fit"]
                if "ours_spc" in row:
                    row["spc_vs_fit"] = row["ours_spc"] / row["fit"]
                if "ours_xla" in row:
                    row["xla_vs_ours"] = row["ours_xla"] / row["ours"]
                for k, e in errors.items():  # XLA cannot compile some ops: report, go on
                    row[f"{k}_error"] = e
            except Exception as e:
                traceback.print_exc()
                row["error"] = (
                    f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                )
            print(f"bench-train {row}", flush=True)
            rows.append(row)
    return {
        "machine": at_start,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "steps_per_call": steps_per_call,
        "repeats": repeats,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    headers = [
        "model",
        "unit",
        "batch",
        "ours",
        "fit baseline",
        "ours / fit",
        f"ours, {result.get('steps_per_call', 1)} steps/call",
        "that / fit",
        "ours+XLA",
        "XLA / ours",
    ]
    body = []
    for r in result["rows"]:
        if "error" in r:
            body.append([r["model"], "", "", "error", r["error"], "", "", "", "", ""])
            continue
        body.append(
            [
                r["model"],
                r["unit"],
                r["batch_size"],
                float(r["ours"]),
                float(r["fit"]),
                f"{r['speedup']:.2f}x",
                float(r["ours_spc"]) if "ours_spc" in r else "-",
                f"{r['spc_vs_fit']:.2f}x" if "spc_vs_fit" in r else "-",
                float(r["ours_xla"]) if "ours_xla" in r else r.get("ours_xla_error", "-"),
                f"{r['xla_vs_ours']:.2f}x" if "xla_vs_ours" in r else "-",
            ]
        )
    m = result["machine"]
    note = (
        f"\n{m['cpus']} CPUs, TF {m['tensorflow']}, load avg {m['load_avg_1m']:.1f} at start, "
        f"{m['when']}; {result['steps_per_epoch']} steps/epoch x {result['epochs']} epochs, "
        f"median over epochs 2..n, then over {result.get('repeats', 1)} interleaved run(s).\n"
    )
    return md_table(headers, body) + note


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    from zoo import models

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated (default: every registered model)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    p.add_argument("--no-xla", action="store_true", help="skip the jit_compile=True column")
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=10,
        help="steps per compiled call of the ours+spc column (1 = skip that column)",
    )
    p.add_argument(
        "--set", action="append", default=[], help="MODEL.KEY=VALUE config override, repeatable"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="interleaved runs per model; each variant's figure is the median over them",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one variant's process
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    names = [n for n in args.models.split(",") if n] or models.names()
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        model, _, field = key.partition(".")
        overrides.setdefault(model, {})[field] = value
    result = run(
        names,
        args.steps,
        max(args.epochs, 2),
        not args.no_xla,
        overrides,
        args.steps_per_call,
        max(args.repeats, 1),
    )
    md = table(result)
    out = write_results("train", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
