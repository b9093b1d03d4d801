"""Benchmark: what an *untrained* model scores, the reference the image zoo must beat.

    python bench/bench_untrained.py [--models dcgan,ddpm] [--samples 1000]

For each image model: its default config, weights as initialised with the config's seed (no
training step), scored by the pipeline's own evaluation (zoo.evaluation.evaluate: held-out
likelihood terms, FID/KID/precision/recall against the held-out split in the dataset's
feature space) on MNIST t10k split exactly as `genpipe run --data idx:...` ingests it.
Prints and writes bench/results/untrained.json and .md. The trained figures to compare with
are in each pipeline run's MLflow metrics (`genpipe run MODEL --data idx:../shared/data/mnist`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import image_local_dataset, machine, md_table, quiet_tf, write_results  # noqa: E402


def score(name: str, data: Any) -> dict[str, Any]:
    import keras

    from zoo import models
    from zoo.evaluation import evaluate
    from zoo.train import data_spec_from_manifest

    cls = models.get(name)
    cfg = models.resolve_config(name)
    keras.utils.set_random_seed(cfg.seed)  # as the trainer does before building
    model = cls(cfg, data_spec_from_manifest(data.manifest, data))
    model.build_model()
    t0 = time.perf_counter()
    metrics = evaluate(model, data, seed=0).metrics
    split = model.heldout_split
    row = {
        "model": name,
        "primary_metric": cls.primary_metric,
        "primary": metrics[cls.primary_metric],
        "fid": metrics.get(f"{split}_fid"),
        "fid_floor": metrics.get(f"{split}_fid_floor"),
        "eval_s": time.perf_counter() - t0,
    }
    print(f"{name}: {row['primary_metric']} {row['primary']:.4g}, fid {row['fid']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    from zoo import models

    image = [n for n in models.names() if models.get(n).family == "image"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(image))
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="GENPIPE_EVAL_SAMPLES (default: each model's own, as in the pipeline)",
    )
    args = p.parse_args(argv)
    if args.samples:
        os.environ["GENPIPE_EVAL_SAMPLES"] = str(args.samples)
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-untrained-") as tmp:
        data = image_local_dataset(Path(tmp))
        rows = [score(n, data) for n in args.models.split(",") if n]
    m = machine()
    md = md_table(
        ["model (untrained)", "primary metric", "value", "FID", "FID floor"],
        [[r["model"], r["primary_metric"], r["primary"], r["fid"], r["fid_floor"]] for r in rows],
    ) + (
        f"\nDefault configs, initial weights; MNIST t10k split as ingest does, "
        f"{args.samples or 'each model’s default number of'} samples; "
        f"{m['cpus']} CPUs, {m['when']}.\n"
    )
    out = write_results("untrained", {"machine": m, "rows": rows}, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
