"""Benchmark: the accelerator switches, per registered model, in one short run.

    python bench/bench_gpu.py [--models vae,gpt] [--steps 50] [--epochs 3] [--budget-s 480]
                              [--data auto|shared|synthetic] [--dry-run] [--json PATH]

For every model (default config, one device) it trains these variants one after the other
and reports samples/s (tokens/s for text models) and the peak GPU memory of each:

  fp32            our trainer (zoo.train.Trainer), float32, 1 step per call, no XLA: the base
  mixed_float16   the same with precision=mixed_float16 (dynamic loss scaling)
  mixed_bfloat16  the same with precision=mixed_bfloat16
  spc10           float32 with steps_per_call=10 (one host sync per 10 optimizer steps)
  xla             float32 with jit_compile=True ("n/a" where the model's config refuses XLA)
  all_on          mixed_bfloat16 + steps_per_call=10 + XLA (bfloat16 alone where XLA is n/a)
  fit             plain Keras `fit` running the same step (bench_train.measure_fit), float32,
                  jit_compile=False set explicitly (Keras's "auto" would turn XLA on on a GPU)

Throughput is the median over the epochs after the first: epoch 1 (tracing, XLA compilation,
cache fill, cuDNN autotuning) is warm-up and excluded; so are model building, dataset writing,
checkpoint writes (outside the timed epoch) and the final model save. Peak memory is TF's
allocator peak (`tf.config.experimental.get_memory_info('GPU:0')['peak']`), reset before each
variant after the previous one's objects are freed; it is the bytes TF had in use, not what the
process reserved. On a machine without a GPU the memory column is "n/a".

The variants run in one worker process (one TensorFlow start-up for all), each result sent
back as a line as soon as it exists; this process keeps the time budget: when it runs out the
worker is killed and the table shows what was measured, the rest marked "not run (budget)".
A worker that dies (e.g. out of memory) is restarted for the remaining variants.

`--dry-run`: tiny configs, 5 steps x 2 epochs, any device, default budget 300 s: checks the harness,
the figures mean nothing. Data: MNIST t10k / tiny-shakespeare from ../shared/data when present
(`--data auto`), else synthetic (random images, generated text: throughput does not depend on
content). Nothing is downloaded. Writes bench/results/gpu.json and gpu.md (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _config, _unit, measure_fit, measure_ours  # noqa: E402
from common import (  # noqa: E402
    MNIST_DIR,
    SHAKESPEARE,
    image_local_dataset,
    machine,
    md_table,
    quiet_tf,
    text_local_dataset,
    write_results,
)

#: variant -> (loop, precision, steps per call, XLA). The order is the run order.
VARIANTS: dict[str, tuple[str, str, int, bool]] = {
    "fp32": ("ours", "float32", 1, False),
    "mixed_float16": ("ours", "mixed_float16", 1, False),
    "mixed_bfloat16": ("ours", "mixed_bfloat16", 1, False),
    "spc10": ("ours", "float32", 10, False),
    "xla": ("ours", "float32", 1, True),
    "all_on": ("ours", "mixed_bfloat16", 10, True),
    "fit": ("fit", "float32", 1, False),
}
HEADERS = [
    "model",
    "variant",
    "loop",
    "precision",
    "steps/call",
    "XLA",
    "unit",
    "batch",
    "throughput",
    "vs fp32",
    "peak GPU MiB",
]
_MARK = "genpipe-bench-gpu"


# ---------------------------------------------------------------------------------------------
# the worker: measures one variant at a time


def _synthetic_dataset(family: str, workdir: Path) -> Any:
    """Random 28x28 digits-shaped images with 10 labels, or generated text (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(0)
    if family == "text":
        words = [
            "".join(rng.choice(list("abcdefghijklmnop"), size=rng.integers(2, 9)))
            for _ in range(500)
        ]
        text = "\n".join(" ".join(rng.choice(words, size=12)) for _ in range(20_000))
        path = workdir / "synthetic.txt"
        path.write_text(text, encoding="utf-8")
        return text_local_dataset(workdir / "text", path)
    path = workdir / "synthetic.npz"
    np.savez(
        path,
        x=rng.integers(0, 256, size=(10_000, 28, 28), dtype=np.uint8),
        y=rng.integers(0, 10, size=10_000, dtype=np.uint8),
    )
    return image_local_dataset(workdir / "image", source=f"npz:{path}")


def _dataset(name: str, workdir: Path, data: str, cache: dict[str, Any]) -> Any:
    from zoo import models

    family = models.get(name).family
    if family not in cache:
        shared = SHAKESPEARE.exists() if family == "text" else MNIST_DIR.exists()
        if data == "shared" or (data == "auto" and shared):
            if family == "text":
                cache[family] = text_local_dataset(workdir / "text")
            else:
                cache[family] = image_local_dataset(workdir / "image")
        else:
            cache[family] = _synthetic_dataset(family, workdir)
    return cache[family]


def _gpu() -> str | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    for g in gpus:  # grow on demand: the peak we read is TF's in-use bytes either way
        with contextlib.suppress(RuntimeError):  # already initialized: keep its setting
            tf.config.experimental.set_memory_growth(g, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    return str(details.get("device_name", "GPU:0"))


def measure_variant(
    name: str, variant: str, spec: dict[str, Any], data: Any, workdir: Path, on_gpu: bool
) -> dict[str, Any]:
    """One variant of one model: throughput (unit/s) and peak GPU MiB, or "n/a" and why."""
    import keras
    import tensorflow as tf

    from zoo.errors import ConfigError

    loop, precision, spc, jit = VARIANTS[variant]
    cfg = _config(name, spec["steps"], spec["epochs"], {})
    if spec["preset"] != "default":  # --dry-run: the model's tiny config, same steps/epochs
        from zoo import models

        tiny = models.resolve_config(name, spec["preset"], {})
        cfg = dataclasses.replace(
            tiny, steps_per_epoch=spec["steps"], epochs=spec["epochs"], distribution="single"
        )
    unit, mult = _unit(name, cfg)
    out: dict[str, Any] = {"unit": unit, "batch": cfg.batch_size}
    if jit:
        try:  # the model's config says whether XLA can compile its step
            dataclasses.replace(cfg, jit_compile=True).validate()
        except ConfigError as e:
            if variant != "all_on":
                return {**out, "na": str(e)}
            jit = False  # all_on without XLA: still the fastest this model can run
            out["note"] = "without XLA (n/a for this model)"
    cfg = dataclasses.replace(cfg, precision=precision, jit_compile=jit, steps_per_call=spc)
    cfg.validate()
    out.update(precision=precision, steps_per_call=spc, xla=jit)
    gc.collect()
    keras.backend.clear_session()
    if on_gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    epochs: list[float] = []
    if loop == "fit":
        value = measure_fit(name, cfg, data, jit_compile=False, per_epoch=epochs)
    else:
        work = workdir / f"{name}-{variant}"
        value = measure_ours(name, cfg, data, work, jit, spc, per_epoch=epochs)
    out["value"] = value * mult
    out["per_epoch"] = [round(v * mult, 1) for v in epochs]  # epoch 1 = warm-up, not in value
    if on_gpu:
        out["peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return out


def worker(spec: dict[str, Any]) -> None:
    """Runs spec["jobs"] ([model, variant] pairs) in order; one result line per job."""
    quiet_tf()
    device = _gpu()
    print(f"{_MARK} machine {json.dumps({**machine(), 'gpu': device})}", flush=True)
    cache: dict[str, Any] = {}
    workdir = Path(spec["workdir"])
    for name, variant in spec["jobs"]:
        t0 = time.perf_counter()
        try:
            data = _dataset(name, workdir, spec["data"], cache)
            out = measure_variant(name, variant, spec, data, workdir, device is not None)
        except Exception as e:
            traceback.print_exc()
            msg = str(e).splitlines()[0][:160] if str(e) else ""
            out = {"error": f"{type(e).__name__}: {msg}"}
        out.update(model=name, variant=variant, wall_s=round(time.perf_counter() - t0, 1))
        print(f"{_MARK} result {json.dumps(out)}", flush=True)


# ---------------------------------------------------------------------------------------------
# the parent: keeps the budget, restarts a dead worker, prints the table


def _reader(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)  # end of output


def run(
    names: list[str], steps: int, epochs: int, budget_s: float, preset: str, data: str
) -> dict[str, Any]:
    """Every (model, variant) within `budget_s` seconds; what did not fit is marked so."""
    t_start = time.monotonic()
    deadline = t_start + budget_s
    jobs = [(n, v) for n in names for v in VARIANTS]
    done: dict[tuple[str, str], dict[str, Any]] = {}
    info: dict[str, Any] = {}
    stopped = ""
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-gpu-") as tmp:
        log = Path(tmp) / "worker.log"
        while len(done) < len(jobs) and not stopped:
            todo = [j for j in jobs if j not in done]
            spec = {
                "jobs": todo,
                "steps": steps,
                "epochs": epochs,
                "preset": preset,
                "data": data,
                "workdir": tmp,
            }
            with open(log, "a") as err:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--worker", json.dumps(spec)],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
            while True:
                try:
                    line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                except queue.Empty:
                    proc.kill()  # our own worker: the budget guard
                    proc.wait()
                    stopped = f"budget of {budget_s:.0f} s ran out"
                    break
                if line is None:  # the worker exited
                    rc = proc.wait()
                    left = [j for j in todo if j not in done]
                    if left:  # it died inside this job: record it, go on with the rest
                        tail = log.read_text().strip().splitlines()[-1:]
                        done[left[0]] = {
                            "model": left[0][0],
                            "variant": left[0][1],
                            "error": f"worker exit {rc}: {tail[0][:160] if tail else ''}",
                        }
                    break
                if line.startswith(f"{_MARK} machine "):
                    info = json.loads(line.split(" ", 2)[2])
                elif line.startswith(f"{_MARK} result "):
                    out = json.loads(line.split(" ", 2)[2])
                    done[(out["model"], out["variant"])] = out
                    print(f"bench-gpu {out}", flush=True)
    rows = []
    for n, v in jobs:
        rows.append(done.get((n, v), {"model": n, "variant": v, "skipped": "not run (budget)"}))
    return {
        "machine": info,
        "gpu": info.get("gpu"),
        "preset": preset,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "budget_s": budget_s,
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "stopped": stopped,
        "variants": {
            k: dict(zip(("loop", "precision", "steps_per_call", "xla"), v, strict=True))
            for k, v in VARIANTS.items()
        },
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    """One Markdown row per (model, variant), then what the figures exclude."""
    base = {
        r["model"]: r["value"] for r in result["rows"] if r["variant"] == "fp32" and "value" in r
    }
    body = []
    for r in result["rows"]:
        loop, precision, spc, jit = VARIANTS[r["variant"]]
        if "value" in r:
            ratio = f"{r['value'] / base[r['model']]:.2f}x" if r["model"] in base else "-"
            peak = float(r["peak_mib"]) if "peak_mib" in r else "n/a"
            xla = "on" if r["xla"] else "off" + (" (n/a)" if "note" in r else "")
            body.append(
                [
                    r["model"],
                    r["variant"],
                    loop,
                    precision,
                    spc,
                    xla,
                    r["unit"],
                    r["batch"],
                    float(r["value"]),
                    ratio,
                    peak,
                ]  # fmt: skip
            )
        else:
            why = r.get("skipped") or r.get("error") or ""
            cell = f"n/a: {r['na']}" if "na" in r else why
            xla = "n/a" if "na" in r else ("on" if jit else "off")
            body.append(
                [
                    r["model"],
                    r["variant"],
                    loop,
                    precision,
                    spc,
                    xla,
                    r.get("unit", ""),
                    r.get("batch", ""),
                    cell,
                    "-",
                    "-",
                ]  # fmt: skip
            )
    m = result["machine"]
    device = result["gpu"] or "no GPU (CPU only)"
    note = (
        f"\n{device}; TF {m.get('tensorflow', '?')}, {m.get('cpus', '?')} CPUs, {m.get('when', '')}. "
        f"{result['preset']} configs, {result['steps_per_epoch']} steps/epoch x "
        f"{result['epochs']} epochs; throughput = median over epochs 2..n (epoch 1 = warm-up: "
        "tracing, XLA compilation, cache fill; model build, checkpoint writes and the final "
        "save are not timed). Peak = TF allocator peak on GPU:0, reset per variant. "
        f"{result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget"
        + (f"; stopped: {result['stopped']}" if result["stopped"] else "")
        + ".\n"
    )
    return md_table(HEADERS, body) + note


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated (default: every registered model)")
    p.add_argument(
        "--steps", type=int, default=0, help="optimizer steps per epoch (default 50; dry run 5)"
    )
    p.add_argument(
        "--epochs", type=int, default=0, help="epochs, the first is warm-up (default 4; dry run 2)"
    )
    p.add_argument(
        "--budget-s", type=float, default=0, help="wall budget (default 480; dry run 300)"
    )
    p.add_argument("--data", choices=("auto", "shared", "synthetic"), default="auto")
    p.add_argument("--dry-run", action="store_true", help="tiny configs, few steps, any device")
    p.add_argument(
        "--json",
        type=Path,
        help="write the JSON here (and the table beside it) instead of bench/results/gpu.*",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the measuring process
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    from zoo import models

    names = [models.check_name(n) for n in args.models.split(",") if n] or models.names()
    epochs = args.epochs or (2 if args.dry_run else 4)
    if epochs < 2:
        p.error(f"--epochs {epochs}: needs >= 2 (epoch 1 is warm-up and not measured)")
    steps = args.steps or (5 if args.dry_run else 50)
    budget = args.budget_s or (300.0 if args.dry_run else 480.0)
    preset = "tiny" if args.dry_run else "default"
    result = run(names, steps, epochs, budget, preset, args.data)
    md = table(result)
    if args.json:  # e.g. the test's dry run: leave bench/results/ (a real run's figures) alone
        args.json.write_text(json.dumps(result, indent=2, default=str))
        args.json.with_suffix(".md").write_text(md)
        out = args.json
    else:
        out = write_results("gpu", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
