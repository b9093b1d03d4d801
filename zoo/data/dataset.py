"""Split, fingerprint, publish to object storage and fetch back: the versioned dataset layer.

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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import zoo
from zoo.data.sources import RawImages, RawText
from zoo.data.validate import validate
from zoo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from zoo.storage import ObjectStore

log = logging.getLogger(__name__)

FORMAT = "genpipe.dataset/v1"
MANIFEST_NAME = "manifest.json"
_FP_IN_URI = re.compile(r"/datasets/([0-9a-f]{64})/manifest\.json$")

Splits = Mapping[str, "RawImages | RawText"]


# ---------------------------------------------------------------------------------------------
# split + fingerprint


def _n_held_out(n: int, test_fraction: float, src: str, unit: str) -> int:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0 < test_fraction < 1
    ):
        raise ConfigError(
            f"test_fraction={test_fraction!r} must be a number in (0, 1), for example 0.1"
        )
    k = math.floor(n * test_fraction + 0.5)
    if k < 1 or k >= n:
        raise DataError(
            f"{src}: {n} {unit} with test_fraction={test_fraction} leaves an empty "
            f"{'held-out' if k < 1 else 'training'} split; valid: more data or another test_fraction"
        )
    return k


def _size(r: RawImages | RawText) -> str:
    """'9 characters' / '1617 images': a split's size in its own unit."""
    if isinstance(r, RawText):
        return f"{len(r.text)} characters"
    return f"{len(r.images)} images"


def split(raw: RawImages | RawText, test_fraction: float = 0.1) -> dict[str, RawImages | RawText]:
    """Deterministic split, no shuffling: the held-out part is the tail.

    Images -> {"train": first (1-f), "test": last f}; text -> {"train": first (1-f) of the
    characters, "val": the rest}.
    """
    validate(raw)
    if isinstance(raw, RawText):
        k = _n_held_out(len(raw.text), test_fraction, raw.source, "characters")
        cut = len(raw.text) - k
        return {
            "train": RawText(raw.text[:cut], raw.source),
            "val": RawText(raw.text[cut:], raw.source),
        }
    n = raw.images.shape[0]
    cut = n - _n_held_out(n, test_fraction, raw.source, "images")

    def part(sl: slice) -> RawImages:
        y = None if raw.labels is None else raw.labels[sl].astype(np.int64)
        return RawImages(raw.images[sl], y, raw.source, raw.classes)

    return {"train": part(slice(0, cut)), "test": part(slice(cut, n))}


def _kind_of(splits: Splits) -> str:
    if not splits:
        raise DataError("no splits given; valid: a dict like {'train': ..., 'test': ...}")
    kinds = {
        r.kind if isinstance(r, (RawImages, RawText)) else type(r).__name__ for r in splits.values()
    }
    if len(kinds) != 1 or not kinds <= {"image", "text"}:
        raise DataError(f"splits mix kinds {sorted(kinds)}; valid: all RawImages or all RawText")
    return kinds.pop()


def fingerprint(splits: Splits) -> str:
    """sha256 hex of the canonical content (kind, split names, shapes, dtype, bytes); no paths."""
    kind = _kind_of(splits)
    h = hashlib.sha256()

    def feed(b: bytes | memoryview) -> None:
        # Length-prefix every field so different contents can never serialise the same.
        h.update(
            len(b).to_bytes(8, "little") if isinstance(b, bytes) else b.nbytes.to_bytes(8, "little")
        )
        h.update(b)

    feed(FORMAT.encode())
    feed(kind.encode())
    for name in sorted(splits):
        r = splits[name]
        feed(name.encode())
        if isinstance(r, RawText):
            feed(r.text.encode("utf-8"))
            continue
        x = np.ascontiguousarray(r.images)
        feed(json.dumps([list(x.shape), str(x.dtype)]).encode())
        feed(memoryview(x).cast("B"))
        if r.labels is None:
            feed(b"no-labels")
        else:
            feed(np.ascontiguousarray(r.labels, dtype="<i8").tobytes())
        feed(json.dumps(r.classes).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# publish


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _put_shard(store: ObjectStore, uri: str, path: Path) -> None:
    """Upload one data object (a seam tests use to interrupt a publish half-way)."""
    store.put_file(uri, path)


def _write_tfrecord(path: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
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


def _existing_manifest(store: ObjectStore, uri: str, fp: str) -> dict[str, Any] | None:
    """The published manifest for `fp` if it exists, parses, and every object it lists exists."""
    if not store.exists(uri):
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
        sh["key"] for s in m["splits"].values() for sh in s["shards"] if not store.exists(sh["key"])
    ]
    if missing:
        log.warning(
            "republishing %s: %d listed object(s) missing, e.g. %s", uri, len(missing), missing[0]
        )
        return None
    return m


def publish(splits: Splits, store: ObjectStore, source: str, shards: int = 4) -> dict[str, Any]:
    """Write the splits under `datasets/<fingerprint>/` and return the manifest.

    Validates first (nothing is written for bad data), uploads the data objects, then the
    manifest last. If a valid manifest for this fingerprint already exists, writes nothing
    and returns it (its `source` and `created` are the first publisher's).
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"shards={shards!r} must be an integer >= 1")
    kind = _kind_of(splits)
    for name, r in splits.items():
        try:
            validate(r)
        except DataError as e:  # say which split, and how big each is: often just too small
            sizes = ", ".join(f"{n} {_size(s)}" for n, s in splits.items())
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
                    _write_tfrecord(Path(tmp) / fname, r.images[lo:hi], labels)
                    files.append((fname, int(hi - lo)))
            shard_entries = []
            for fname, count in files:
                path = Path(tmp) / fname
                uri = store.uri(f"{prefix}/{fname}")
                shard_entries.append(
                    {
                        "key": uri,
                        "sha256": _sha256_file(path),
                        "count": count,
                        "bytes": path.stat().st_size,
                    }
                )
                _put_shard(store, uri, path)
            entries[name] = {
                "count": sum(s["count"] for s in shard_entries),
                "shards": shard_entries,
            }

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
        "uri": manifest_uri,
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
    manifest = json.loads(json.dumps(manifest, sort_keys=True))
    store.put_json(manifest_uri, manifest)  # LAST: readers only ever see complete datasets
    log.info("published dataset %s (%s) to %s", fp[:12], kind, manifest_uri)
    return manifest


# ---------------------------------------------------------------------------------------------
# fetch


@dataclass
class LocalDataset:
    """A fetched (sha256-verified) dataset in a local directory."""

    manifest: dict[str, Any]
    dir: Path
    #: local shard files per split, in manifest (= record) order
    shards: dict[str, list[Path]]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def shape(self) -> tuple[int, int, int] | None:
        s = self.manifest.get("shape")
        return tuple(s) if s else None  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        return self.manifest.get("num_classes")

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def count(self, split: str) -> int:
        return int(self.manifest["splits"][self._check_split(split)]["count"])

    def paths(self, split: str) -> list[Path]:
        return self.shards[self._check_split(split)]

    def _check_split(self, split: str) -> str:
        if split not in self.manifest["splits"]:
            raise DataError(
                f"dataset {self.fingerprint[:12]} has no split {split!r}; valid: {', '.join(self.splits)}"
            )
        return split

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> LocalDataset:
        """Open a directory written by `fetch` (its manifest.json is written last)."""
        d = Path(directory)
        try:
            m = check_manifest(json.loads((d / MANIFEST_NAME).read_text()), str(d / MANIFEST_NAME))
        except (OSError, ValueError) as e:
            raise DataError(f"{d}: no readable fetched dataset here ({e})") from None
        local = cls(m, d, _local_paths(m, d))
        missing = [p for ps in local.shards.values() for p in ps if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: listed in {d / MANIFEST_NAME} but missing; fetch again")
        return local


def _local_paths(m: dict[str, Any], d: Path) -> dict[str, list[Path]]:
    out, seen = {}, set()
    for name, s in m["splits"].items():
        out[name] = []
        for sh in s["shards"]:
            base = sh["key"].rsplit("/", 1)[-1]
            if base in ("", ".", "..") or base in seen or base == MANIFEST_NAME:
                raise DataError(
                    f"{m.get('uri')}: shard key {sh['key']!r} has a bad or duplicate name"
                )
            seen.add(base)
            out[name].append(d / base)
    return out


def _cached(d: Path, manifest_uri: str | None = None) -> LocalDataset | None:
    """A complete local copy in `d`, or None. Sizes are checked; hashes were checked on download."""
    if not (d / MANIFEST_NAME).is_file():
        return None
    try:
        local = LocalDataset.open(d)
    except DataError:
        return None
    if local.fingerprint != d.name:
        return None
    for name, ps in local.shards.items():
        for p, sh in zip(ps, local.manifest["splits"][name]["shards"], strict=True):
            if "bytes" in sh and p.stat().st_size != sh["bytes"]:
                return None
    if manifest_uri is not None and local.manifest.get("uri") != manifest_uri:
        # Same content published elsewhere: fine to reuse, but report the URI we were given.
        local.manifest = {**local.manifest, "uri": manifest_uri}
    return local


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(manifest_uri: str, store: ObjectStore, cache_dir: str | os.PathLike[str]) -> LocalDataset:
    """Download a published dataset into `cache_dir/<fingerprint>/`, verifying every sha256.

    Cached by fingerprint: when the URI is a standard `datasets/<fp>/manifest.json` and a
    complete copy is on disk, nothing is downloaded at all.
    """
    from minio.error import S3Error

    cache_dir = Path(cache_dir).expanduser()
    m_fp = _FP_IN_URI.search(manifest_uri)
    if m_fp and (hit := _cached(cache_dir / m_fp.group(1), manifest_uri)) is not None:
        return hit
    try:
        manifest = check_manifest(store.get_json(manifest_uri), manifest_uri)
    except S3Error as e:
        raise DataError(
            f"{manifest_uri}: cannot read the dataset manifest ({e.code}); run ingest first"
        ) from None
    except ValueError as e:
        raise DataError(f"{manifest_uri}: manifest is not valid JSON ({e})") from None
    fp = manifest["fingerprint"]
    if m_fp and m_fp.group(1) != fp:
        raise DataError(
            f"{manifest_uri}: manifest describes fingerprint {fp}, not the one in its path"
        )
    d = cache_dir / fp
    if (hit := _cached(d, manifest_uri)) is not None:
        return hit
    d.mkdir(parents=True, exist_ok=True)
    paths = _local_paths(manifest, d)
    for name, s in manifest["splits"].items():
        for sh, dest in zip(s["shards"], paths[name], strict=True):
            if dest.is_file() and _sha256_file(dest) == sh["sha256"]:
                continue  # left by an earlier, interrupted fetch
            # A unique temp name: concurrent fetchers into one cache must not share it.
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.download")
            try:
                store.get_file(sh["key"], tmp)
                got = _sha256_file(tmp)
                if got != sh["sha256"]:
                    raise DataError(
                        f"{sh['key']}: sha256 {got} does not match the manifest's {sh['sha256']}; "
                        "the object was changed or corrupted after publishing"
                    )
                os.replace(tmp, dest)
            except S3Error as e:
                raise DataError(
                    f"{sh['key']}: cannot download ({e.code}); listed in {manifest_uri}"
                ) from None
            finally:
                if tmp.exists():
                    tmp.unlink()
    # The local manifest goes last too: its presence means every shard is here and verified.
    _atomic_write(d / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return LocalDataset(manifest, d, paths)
