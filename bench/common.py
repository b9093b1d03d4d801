"""Helpers shared by the benchmarks: local datasets from the shared real data, result files.

Benchmarks read the real data in ../shared/data (MNIST t10k, tiny-shakespeare) and never
download anything. Datasets are split and written exactly as `genpipe ingest` does (TFRecord
shards, same split), but to a local directory, so no object store is needed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
RESULTS = ROOT / "bench" / "results"


def quiet_tf() -> None:
    """No GPU probing noise and no oneDNN chatter in benchmark output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def image_local_dataset(workdir: Path, source: str | None = None, shards: int = 4) -> Any:
    """MNIST t10k (or `source`) as a LocalDataset of TFRecord shards, split like ingest."""
    import numpy as np

    from zoo.data import LocalDataset, fingerprint, load_source, split
    from zoo.data.publishing import write_tfrecord

    raw = load_source(source or f"idx:{MNIST_DIR}")
    parts = split(raw, test_fraction=0.1)
    fp = fingerprint(parts)
    d = workdir / fp
    d.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    paths: dict[str, list[Path]] = {}
    for name, r in parts.items():
        n = r.images.shape[0]
        k = min(shards, n)
        bounds = np.linspace(0, n, k + 1).astype(int)
        entries = []
        paths[name] = []
        for i in range(k):
            p = d / f"{name}-{i:05d}-of-{k:05d}.tfrecord"
            labels = None if r.labels is None else r.labels[bounds[i] : bounds[i + 1]]
            if not p.exists():
                write_tfrecord(p, r.images[bounds[i] : bounds[i + 1]], labels)
            paths[name].append(p)
            entries.append({"key": f"s3://local/{p.name}", "count": int(bounds[i + 1] - bounds[i])})
        splits[name] = {"count": n, "shards": entries}
    any_split = parts["train"]
    num_classes = None if any_split.labels is None else int(any_split.labels.max()) + 1
    manifest = {
        "format": "genpipe.dataset/v1",
        "kind": "image",
        "fingerprint": fp,
        "source": raw.source,
        "shape": [int(s) for s in any_split.images.shape[1:]],
        "dtype": "uint8",
        "num_classes": num_classes,
        "splits": splits,
    }
    return LocalDataset(manifest, d, paths)


def text_local_dataset(workdir: Path, path: Path = SHAKESPEARE) -> Any:
    """tiny-shakespeare as a LocalDataset, split like ingest (last 10% held out)."""
    from zoo.data import LocalDataset, fingerprint, load_source, split

    parts = split(load_source(f"text:{path}"), test_fraction=0.1)
    fp = fingerprint(parts)
    d = workdir / fp
    d.mkdir(parents=True, exist_ok=True)
    shards, splits = {}, {}
    for name, raw in parts.items():
        p = d / f"{name}.txt"
        p.write_text(raw.text, encoding="utf-8")
        shards[name] = [p]
        splits[name] = {"count": len(raw.text), "shards": [{"key": f"s3://local/{p.name}"}]}
    manifest = {"format": "genpipe.dataset/v1", "kind": "text", "fingerprint": fp, "splits": splits}
    return LocalDataset(manifest, d, shards)


def dataset_for(model_name: str, workdir: Path) -> Any:
    """The benchmark dataset matching a registered model's family."""
    from zoo import models

    family = models.get(model_name).family
    if family == "text":
        return text_local_dataset(workdir / "text")
    return image_local_dataset(workdir / "image")


def machine() -> dict[str, Any]:
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "load_avg_1m": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, payload: dict[str, Any], table_md: str) -> Path:
    """bench/results/<name>.json and <name>.md (the directory is gitignored)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(table_md)
    return out


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
