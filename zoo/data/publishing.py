"""Publish splits to the object store: image splits as TFRecord shards, text splits as UTF-8
objects, the manifest (zoo.data.manifest) written last."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.data.manifest import MANIFEST_NAME, build_manifest, check_manifest, sha256_file
from zoo.data.raw import RawText
from zoo.data.splits import Splits, fingerprint, kind_of, size
from zoo.data.validate import validate
from zoo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from zoo.storage import ObjectStore

log = logging.getLogger(__name__)


def _put_shard(store: ObjectStore, uri: str, path: Path) -> None:
    """Upload one data object (a seam tests use to interrupt a publish half-way)."""
    store.put_file(uri, path)


def write_tfrecord(path: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    """One TFRecord file of tf.train.Examples {"image": raw uint8 bytes, "label": int64 (-1 =
    none)}, the record layout zoo.data.reader parses."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(images.shape[0]):
            label = -1 if labels is None else int(labels[i])
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[images[i].tobytes()])
                        ),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    }
                )
            )
            # deterministic=True: identical data gives identical bytes, so concurrent
            # publishers of one fingerprint overwrite objects with the same content.
            w.write(ex.SerializeToString(deterministic=True))


def _existing_manifest(store: ObjectStore, uri: str, fp: str) -> dict[str, Any] | None:
    """The published manifest for `fp` if it exists, parses, and every object it lists exists
    with the size it lists.

    One listing of the dataset's prefix answers for the manifest and every shard under it (a
    re-run on unchanged data made one request per shard, one after another); a listed object
    elsewhere (not what `publish` writes) is checked on its own.
    """
    prefix = uri.rsplit("/", 1)[0] + "/"
    sizes = dict(store.list_sizes(prefix))
    if uri not in sizes:
        return None
    try:
        m = check_manifest(store.get_json(uri), uri)
    except (DataError, ValueError) as e:
        log.warning("replacing invalid manifest %s: %s", uri, e)
        return None
    if m["fingerprint"] != fp:
        log.warning("replacing manifest %s: it describes fingerprint %s", uri, m["fingerprint"])
        return None
    missing = [
        sh["key"]
        for s in m["splits"].values()
        for sh in s["shards"]
        if not _shard_present(store, sh, sizes, prefix)
    ]
    if missing:
        log.warning(
            "republishing %s: %d listed object(s) missing or of another size, e.g. %s",
            uri,
            len(missing),
            missing[0],
        )
        return None
    return m


def _shard_present(
    store: ObjectStore, shard: dict[str, Any], sizes: dict[str, int], prefix: str
) -> bool:
    """Whether the manifest's `shard` is stored whole: under the listed `prefix`, by the
    listing (and its size, where the manifest records one); elsewhere, by a request."""
    key = shard["key"]
    if not key.startswith(prefix):
        return store.exists(key)
    return key in sizes and shard.get("bytes", sizes[key]) == sizes[key]


def check_splits(splits: Splits, source: str) -> str:
    """Raise DataError (naming the split, the sizes and the record) unless every split is
    usable and all agree in kind, image shape and labels; returns the kind.

    The check of what gets written: a split can be unusable when the whole is fine (a text's
    held-out tail with a single distinct character).
    """
    kind = kind_of(splits)
    for name, r in splits.items():
        try:
            validate(r)
        except DataError as e:  # say which split, and how big each is: often just too small
            sizes = ", ".join(f"{n} {size(s)}" for n, s in splits.items())
            detail = str(e).removeprefix(f"{r.source}: ")
            raise DataError(
                f"{r.source}: the {name!r} split ({sizes}) is unusable: {detail} "
                "(more data or another test_fraction)"
            ) from None
    if kind == "image":
        shapes = {tuple(r.images.shape[1:]) for r in splits.values()}  # type: ignore[union-attr]
        labelled = {r.labels is not None for r in splits.values()}  # type: ignore[union-attr]
        if len(shapes) > 1 or len(labelled) > 1:
            raise DataError(
                f"{source}: splits differ in image shape {sorted(shapes)} or in having labels"
            )
    return kind


def publish(splits: Splits, store: ObjectStore, source: str, shards: int = 4) -> dict[str, Any]:
    """Write the splits under `datasets/<fingerprint>/` and return the manifest.

    Checks the splits first (nothing is written for bad data), uploads the data objects, then
    the manifest last. If a valid manifest for this fingerprint already exists, writes nothing
    and returns it (its `source` and `created` are the first publisher's).
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"shards={shards!r} must be an integer >= 1")
    kind = check_splits(splits, source)
    fp = fingerprint(splits)
    prefix = f"datasets/{fp}"
    manifest_uri = store.uri(f"{prefix}/{MANIFEST_NAME}")
    store.ensure_bucket()
    existing = _existing_manifest(store, manifest_uri, fp)
    if existing is not None:
        log.info("dataset %s already published at %s", fp[:12], manifest_uri)
        return existing

    entries: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="genpipe-publish-") as tmp:
        for name, r in splits.items():
            files: list[tuple[str, int]] = []  # (file name, record count)
            if isinstance(r, RawText):
                fname = f"{name}.txt"
                (Path(tmp) / fname).write_bytes(r.text.encode("utf-8"))
                files.append((fname, len(r.text)))
            else:
                n = r.images.shape[0]
                k = min(shards, n)  # never write empty shards
                # Contiguous chunks, so reading the shards in order gives the records in order.
                bounds = np.linspace(0, n, k + 1).astype(int)
                for i in range(k):
                    lo, hi = bounds[i], bounds[i + 1]
                    fname = f"{name}-{i:05d}-of-{k:05d}.tfrecord"
                    labels = None if r.labels is None else r.labels[lo:hi]
                    write_tfrecord(Path(tmp) / fname, r.images[lo:hi], labels)
                    files.append((fname, int(hi - lo)))
            shard_entries = []
            for fname, count in files:
                path = Path(tmp) / fname
                uri = store.uri(f"{prefix}/{fname}")
                shard_entries.append(
                    {
                        "key": uri,
                        "sha256": sha256_file(path),
                        "count": count,
                        "bytes": path.stat().st_size,
                    }
                )
                _put_shard(store, uri, path)
            entries[name] = {
                "count": sum(s["count"] for s in shard_entries),
                "shards": shard_entries,
            }
    manifest = build_manifest(splits, kind, fp, source, manifest_uri, entries)
    store.put_json(manifest_uri, manifest)  # LAST: readers only ever see complete datasets
    log.info("published dataset %s (%s) to %s", fp[:12], kind, manifest_uri)
    return manifest
