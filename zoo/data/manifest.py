"""The published dataset's format: its layout in the object store and its manifest.

A published dataset lives under `datasets/<fingerprint>/` in the default bucket:

    train-00000-of-00004.tfrecord ...   image splits: tf.train.Example {"image": raw uint8 bytes,
    test-00000-of-00001.tfrecord        "label": int64 (-1 when unlabelled)}, shape in the manifest
    train.txt, val.txt                  text splits: one UTF-8 object each
    manifest.json                       written LAST

The manifest (JSON, keys sorted):

    format "genpipe.dataset/v1", kind "image"|"text", fingerprint, source (of the first
    publisher), uri (the manifest's own s3:// URI), shape [H, W, C] (null for text),
    dtype "uint8" (images) | "utf-8" (text), num_classes (null when unlabelled or text),
    classes (folder class names or null),
    splits {name: {count, shards: [{key (s3:// URI), sha256, count, bytes}]}}   count = records
        (images) or characters (text),
    stats  images: {split: "train", mean, std, min, max (pixels, 0..255 units, over train),
                    label_histogram: {split: [count per class]} or null}
           text:   {chars, distinct_chars, lines, vocab (sorted distinct characters, all splits)},
    created (ISO 8601 UTC), genpipe_version.

The fingerprint is a sha256 of the content, so publishing is idempotent (same data -> same
prefix; an existing valid manifest means there is nothing to do) and a reader that finds a
manifest finds every object it lists (S3 PUTs are atomic per object and the manifest goes last).

Splitting and fingerprinting: zoo.data.splits; writing: zoo.data.publishing; reading back:
zoo.data.fetching and zoo.data.reader.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import zoo
from zoo.data.raw import RawImages, RawText
from zoo.errors import DataError

FORMAT = "genpipe.dataset/v1"
MANIFEST_NAME = "manifest.json"
#: a standard manifest URI, `.../datasets/<fingerprint>/manifest.json`, and its fingerprint
FP_IN_URI = re.compile(r"/datasets/([0-9a-f]{64})/manifest\.json$")


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a local file (a shard, as its manifest entry lists it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _image_stats(splits: Mapping[str, RawImages], num_classes: int | None) -> dict[str, Any]:
    ref = "train" if "train" in splits else sorted(splits)[0]
    x = splits[ref].images
    hist = None
    if num_classes is not None:
        hist = {
            name: np.bincount(r.labels, minlength=num_classes).tolist()  # type: ignore[arg-type]
            for name, r in splits.items()
        }
    return {
        "split": ref,  # pixel statistics are over this split, in 0..255 units
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": int(x.min()),
        "max": int(x.max()),
        "label_histogram": hist,
    }


def _text_stats(splits: Mapping[str, RawText]) -> dict[str, Any]:
    chars = set().union(*(set(r.text) for r in splits.values()))
    return {
        "chars": sum(len(r.text) for r in splits.values()),
        "distinct_chars": len(chars),
        "lines": sum(r.text.count("\n") for r in splits.values()),
        # The vocabulary over every split, so char models can encode held-out text too.
        "vocab": "".join(sorted(chars)),
    }


def check_manifest(m: Any, where: str) -> dict[str, Any]:
    """Raise DataError unless `m` looks like a genpipe.dataset/v1 manifest."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise DataError(f"{where}: not a dataset manifest (format {got!r}; valid: {FORMAT!r})")
    fp = m.get("fingerprint")
    if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{64}", fp):
        raise DataError(f"{where}: manifest fingerprint {fp!r} is not a sha256 hex digest")
    if m.get("kind") not in ("image", "text"):
        raise DataError(f"{where}: manifest kind {m.get('kind')!r}; valid: image, text")
    if m["kind"] == "image":
        shape = m.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise DataError(
                f"{where}: manifest shape {shape!r}; valid: [H, W, C] of positive integers"
            )
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f"{where}: manifest lists no splits")
    for name, s in splits.items():
        shards = s.get("shards") if isinstance(s, dict) else None
        if not isinstance(shards, list) or not shards or not isinstance(s.get("count"), int):
            raise DataError(f"{where}: manifest split {name!r} has no shards or count")
        for sh in shards:
            if not (
                isinstance(sh, dict)
                and isinstance(sh.get("key"), str)
                and sh["key"].startswith("s3://")
                and isinstance(sh.get("sha256"), str)
                and isinstance(sh.get("count"), int)
            ):
                raise DataError(
                    f"{where}: manifest split {name!r} has a malformed shard entry {sh!r}"
                )
        if sum(sh["count"] for sh in shards) != s["count"]:
            raise DataError(
                f"{where}: manifest split {name!r} shard counts do not add up to {s['count']}"
            )
    return m


def build_manifest(
    splits: Mapping[str, RawImages | RawText],
    kind: str,
    fp: str,
    source: str,
    uri: str,
    entries: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of `splits` (already written as `entries`), exactly as a reader of the
    stored JSON gets it back (keys sorted)."""
    if kind == "image":
        img_splits: dict[str, RawImages] = dict(splits)  # type: ignore[arg-type]
        any_split = next(iter(img_splits.values()))
        if any_split.labels is None:
            num_classes = None
        elif any_split.classes is not None:
            num_classes = len(any_split.classes)
        else:
            num_classes = max(int(r.labels.max()) for r in img_splits.values()) + 1  # type: ignore[union-attr]
        shape: list[int] | None = [int(s) for s in any_split.images.shape[1:]]
        classes = any_split.classes
        stats = _image_stats(img_splits, num_classes)
    else:
        num_classes, shape, classes = None, None, None
        stats = _text_stats(splits)  # type: ignore[arg-type]
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "fingerprint": fp,
        "source": source,
        "uri": uri,
        "shape": shape,
        "dtype": "uint8" if kind == "image" else "utf-8",
        "num_classes": num_classes,
        "classes": classes,
        "splits": entries,
        "stats": stats,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "genpipe_version": zoo.__version__,
    }
    # Exactly what a reader of the stored JSON gets back (put_json sorts keys).
    return json.loads(json.dumps(manifest, sort_keys=True))
