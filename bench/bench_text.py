"""Benchmark: train each text model on tinyshakespeare for a fixed wall-clock budget.

    python bench/bench_text.py --budget-seconds 180 [--models gpt,char_rnn] [--set gpt.n_layer=6]

The text is split exactly as `genpipe run` ingests it (last 10% of the characters held out),
the vocabulary is built on the training split, and each model is trained with its own
`train_step_replica` under tf.function (the trainer's step) with its default config. The
number of steps is planned from a short calibration run (so the cosine learning-rate schedule
ends at the budget); training stops at the budget in any case. Prints and writes to
bench/results/text.json: val loss (nats/char, over the whole held-out split), bits/char,
perplexity and training tokens/s. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def local_text_dataset(path: Path, workdir: Path, test_fraction: float = 0.1) -> Any:
    """The train/val split of `genpipe run`'s ingest, as a LocalDataset on local files."""
    from zoo.data import LocalDataset, load_source, split

    parts = split(load_source(f"text:{path}"), test_fraction=test_fraction)
    shards, splits = {}, {}
    for name, raw in parts.items():
        p = workdir / f"{name}.txt"
        p.write_text(raw.text, encoding="utf-8")
        shards[name] = [p]
        splits[name] = {"count": len(raw.text), "shards": [{"key": f"local/{p.name}"}]}
    manifest = {"kind": "text", "fingerprint": "bench-" + path.name, "splits": splits}
    return LocalDataset(manifest, workdir, shards)


def _make(name: str, cfg: Any, spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    import tensorflow as tf

    from zoo import models

    tf.keras.utils.set_random_seed(cfg.seed)
    model = models.get(name)(cfg, spec)
    model.build_model()
    opts = model.make_optimizers()
    for o in opts.values():
        o.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)

    @tf.function
    def step(batch: dict[str, Any]) -> dict[str, Any]:
        out = model.train_step_replica(batch, opts, cfg.batch_size, step_var)
        step_var.assign_add(1)
        return out

    return model, step, step_var


def bench_model(
    name: str, data: Any, budget: float, overrides: dict[str, Any], calib_steps: int = 20
) -> dict[str, Any]:
    import dataclasses

    from zoo import models
    from zoo.train import data_spec_from_manifest, evaluate_split

    spec = data_spec_from_manifest(data.manifest, data)
    cfg = models.resolve_config(name, "default", overrides)
    # Calibrate: steps/s of this config on this machine now (after tracing).
    model, step, _ = _make(name, cfg, spec)
    it = iter(model.make_dataset(data, "train", cfg.batch_size, shuffle=True, seed=1))
    step(next(it))
    t0 = time.perf_counter()
    for _ in range(calib_steps):
        float(step(next(it))["loss"])
    rate = calib_steps / (time.perf_counter() - t0)
    planned = max(50, int(rate * budget))
    cfg = dataclasses.replace(cfg, epochs=1, steps_per_epoch=planned)
    model, step, step_var = _make(name, cfg, spec)
    ds = model.make_dataset(data, "train", cfg.batch_size, shuffle=True, seed=cfg.seed)
    ds = ds.repeat()
    it = iter(ds)
    step(next(it))  # trace outside the budget
    done, losses = 1, []
    t0 = time.perf_counter()
    while done < planned and time.perf_counter() - t0 < budget:
        out = step(next(it))
        done += 1
        if done % 50 == 0:
            losses.append(float(out["loss"]))
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    val = evaluate_split(model, data, "val", batch_size=256)["loss"]
    eval_s = time.perf_counter() - t1
    tokens = (done - 1) * cfg.batch_size * cfg.nchars
    sample = model.generate("ROMEO:", 200, temperature=0.8, seed=0)
    return {
        "model": name,
        "config": dataclasses.asdict(cfg),
        "params": int(model.count_params()),
        "budget_s": budget,
        "train_s": round(train_s, 1),
        "steps": done,
        "planned_steps": planned,
        "tokens_per_s": round(tokens / train_s, 1),
        "val_loss_nats_per_char": round(val, 4),
        "val_bits_per_char": round(val / math.log(2), 4),
        "val_perplexity": round(math.exp(val), 3),
        "last_train_loss": losses[-1] if losses else None,
        "eval_s": round(eval_s, 1),
        "sample": sample,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-seconds", type=float, default=180.0)
    ap.add_argument("--models", default="gpt,char_rnn")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value override")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "text.json")
    args = ap.parse_args()
    from zoo.config import parse_overrides

    results = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-text-") as tmp:
        data = local_text_dataset(args.data, Path(tmp))
        for name in args.models.split(","):
            mine = [s.split(".", 1)[1] for s in args.set if s.startswith(f"{name}.")]
            r = bench_model(name, data, args.budget_seconds, parse_overrides(mine))
            results.append(r)
            print(
                f"{name:9s} params={r['params']:,} steps={r['steps']} in {r['train_s']} s: "
                f"val loss {r['val_loss_nats_per_char']:.4f} nats/char, "
                f"{r['val_bits_per_char']:.4f} bits/char, ppl {r['val_perplexity']:.2f}, "
                f"{r['tokens_per_s']:,.0f} tokens/s",
                flush=True,
            )
            print(f"  sample: {r['sample'][:120]!r}", flush=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": load,
            "loadavg_at_end": os.getloadavg(),
        },
        "anchor": "nanoGPT CPU recipe: val loss 1.88 in ~3 min on a laptop CPU",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} (load average at start {load[0]:.2f}, end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
