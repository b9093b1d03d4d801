"""Benchmark: training throughput of our trainer vs plain Keras `fit`, for every registered model.

    python bench/bench_train.py [--models vae,dcgan] [--steps 30] [--epochs 3] [--no-xla]

Side by side in one process, per model, with the model's default config (same architecture,
same global batch, same number of optimizer steps, same examples):

  ours      zoo.train.Trainer.run() on one device: cached, parallel-interleaved TFRecord input,
            tf.function step via strategy.run, per-epoch seeded shuffling.
  ours+xla  the same with `jit_compile=True` (XLA) on the train step.
  fit       the plain-Keras baseline: a keras.Model wrapper whose `train_step` runs the model's
            own loss and optimizer update (`train_step_replica`, the same layers and math) and
            is trained with `model.fit` on in-memory numpy arrays of the same examples, with
            Keras's default input handling (shuffle=True), verbose=0 (no progress-bar cost).

Throughput is samples/s (tokens/s for text models = samples/s x context length) over the
epochs after the first (the first includes tracing). The machine is shared and noisy: the
ratio is what matters, and it is measured in the same process minutes apart.
Writes bench/results/train.json and train.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
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


def measure_ours(name: str, cfg: Any, data: Any, workdir: Path, jit: bool) -> float:
    """Median samples/s of our trainer's epochs after the first."""
    from zoo.train import Trainer

    cfg = dataclasses.replace(cfg, jit_compile=jit)
    per_epoch: list[float] = []
    Trainer(
        name,
        cfg,
        data,
        workdir,
        on_epoch=lambda e, m: per_epoch.append(m["train_samples_per_s"]),
    ).run()
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


def measure_fit(name: str, cfg: Any, data: Any) -> float:
    """Median samples/s of plain `fit` on numpy arrays over the epochs after the first."""
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
    wrapper.compile()
    x = _numpy_examples(inner, data, batch, cfg.steps_per_epoch)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.t0)

    wrapper.fit(
        x, batch_size=batch, epochs=cfg.epochs, shuffle=True, verbose=0, callbacks=[Timer()]
    )
    n = next(iter(x.values())).shape[0]
    return statistics.median(n / t for t in times[1:])


def _unit(name: str, cfg: Any) -> tuple[str, int]:
    from zoo import models

    if models.get(name).family == "text":
        return "tokens/s", int(cfg.nchars)
    return "samples/s", 1


def run(
    names: list[str], steps: int, epochs: int, xla: bool, overrides: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    import keras

    rows = []
    at_start = machine()
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-train-") as tmp:
        for name in names:
            row: dict[str, Any] = {"model": name}
            try:
                data = dataset_for(name, Path(tmp))
                cfg = _config(name, steps, epochs, overrides.get(name, {}))
                unit, mult = _unit(name, cfg)
                row.update(unit=unit, batch_size=cfg.batch_size, steps_per_epoch=steps)
                keras.backend.clear_session()
                row["ours"] = (
                    measure_ours(name, cfg, data, Path(tmp) / f"{name}-ours", False) * mult
                )
                keras.backend.clear_session()
                row["fit"] = measure_fit(name, cfg, data) * mult
                row["speedup"] = row["ours"] / row["fit"]
                if xla:
                    keras.backend.clear_session()
                    try:
                        row["ours_xla"] = (
                            measure_ours(name, cfg, data, Path(tmp) / f"{name}-xla", True) * mult
                        )
                        row["xla_vs_ours"] = row["ours_xla"] / row["ours"]
                    except Exception as e:  # XLA cannot compile some ops: report, go on
                        row["ours_xla_error"] = (
                            f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                        )
            except Exception as e:
                traceback.print_exc()
                row["error"] = (
                    f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                )
            print(f"bench-train {row}", flush=True)
            rows.append(row)
    return {"machine": at_start, "steps_per_epoch": steps, "epochs": epochs, "rows": rows}


def table(result: dict[str, Any]) -> str:
    headers = [
        "model",
        "unit",
        "batch",
        "ours",
        "fit baseline",
        "ours / fit",
        "ours+XLA",
        "XLA / ours",
    ]
    body = []
    for r in result["rows"]:
        if "error" in r:
            body.append([r["model"], "", "", "error", r["error"], "", "", ""])
            continue
        body.append(
            [
                r["model"],
                r["unit"],
                r["batch_size"],
                float(r["ours"]),
                float(r["fit"]),
                f"{r['speedup']:.2f}x",
                float(r["ours_xla"]) if "ours_xla" in r else r.get("ours_xla_error", "-"),
                f"{r['xla_vs_ours']:.2f}x" if "xla_vs_ours" in r else "-",
            ]
        )
    m = result["machine"]
    note = (
        f"\n{m['cpus']} CPUs, TF {m['tensorflow']}, load avg {m['load_avg_1m']:.1f} at start, "
        f"{m['when']}; {result['steps_per_epoch']} steps/epoch x {result['epochs']} epochs, "
        "median over epochs 2..n.\n"
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
        "--set", action="append", default=[], help="MODEL.KEY=VALUE config override, repeatable"
    )
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n] or models.names()
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        model, _, field = key.partition(".")
        overrides.setdefault(model, {})[field] = value
    result = run(names, args.steps, max(args.epochs, 2), not args.no_xla, overrides)
    md = table(result)
    out = write_results("train", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
