"""Read a fetched dataset: tf.data pipelines for training, numpy arrays for evaluation, text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from zoo.data.fetching import LocalDataset
from zoo.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

# The whole split is cached in memory anyway; this caps the shuffle buffer's extra copy.
MAX_SHUFFLE_BUFFER = 10_000


def _require_kind(local: LocalDataset, kind: str) -> None:
    if local.kind != kind:
        raise DataError(
            f"dataset {local.fingerprint[:12]} holds {local.kind} data, not {kind} data"
        )


def _parse_fn(shape: tuple[int, int, int]):  # noqa: ANN202 - returns a tf function
    import tensorflow as tf

    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    # Plain graph code: autograph's conversion (tf.data converts map functions by default)
    # was pure tracing cost, paid by every pipeline built.
    @tf.autograph.experimental.do_not_convert
    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ex = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), shape)
        return image, ex["label"]

    return parse


def _decoded(local: LocalDataset, split: str, interleave: bool) -> tf.data.Dataset:
    """The split's decoded uint8 records, cached in memory and shared by every pipeline built
    on this LocalDataset: the trainer builds one pipeline per epoch (seeded, so a resumed run
    replays the same order), and must not decode the shards again each time: decoding
    concurrently with the train step halved training throughput on a 2-core machine.
    """
    import tensorflow as tf

    memo = local.__dict__.setdefault("_decoded_memo", {})
    key = (split, interleave)
    if key not in memo:
        files = [str(p) for p in local.paths(split)]
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            # One file at a time keeps the original record order when not shuffling.
            cycle_length=min(len(files), 4) if interleave else 1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.map(_parse_fn(local.shape), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        memo[key] = ds.cache()  # uint8, before shuffling: 4x smaller than float32
    return memo[key]


def image_dataset(
    local: LocalDataset,
    split: str,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of {"image": float32 [B, H, W, C] in [0, 1], "label": int64 [B]} (-1 = no label).

    Shards are read in parallel and the decoded uint8 records cached in memory (datasets are
    small). The shuffle order depends only on `seed`: a new pipeline with the same seed
    replays the same stream, while iterating one pipeline again (or repeat=True) reshuffles
    for each pass. With shuffle=False the records come in their original order.
    """
    import tensorflow as tf

    _require_kind(local, "image")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
    count = local.count(split)
    ds = _decoded(local, split, interleave=shuffle)
    if shuffle:
        ds = ds.shuffle(min(count, MAX_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        tf.autograph.experimental.do_not_convert(
            lambda x, y: {"image": tf.cast(x, tf.float32) / 255.0, "label": y}
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def load_split_arrays(local: LocalDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as (uint8 [N, H, W, C] images, int64 [N] labels), in record order."""
    import tensorflow as tf

    _require_kind(local, "image")
    files = [str(p) for p in local.paths(split)]
    ds = tf.data.TFRecordDataset(files).map(_parse_fn(local.shape)).batch(4096)
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    h, w, c = local.shape  # type: ignore[misc]
    images = np.concatenate(xs) if xs else np.zeros((0, h, w, c), np.uint8)
    labels = np.concatenate(ys).astype(np.int64) if ys else np.zeros((0,), np.int64)
    if images.shape[0] != local.count(split):
        raise DataError(
            f"{local.dir}: split {split!r} has {images.shape[0]} records but the manifest says "
            f"{local.count(split)}; fetch again"
        )
    return images, labels


def text_split(local: LocalDataset, split: str) -> str:
    """The text of one split."""
    _require_kind(local, "text")
    parts = []
    for p in local.paths(split):
        try:
            parts.append(p.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: cannot read split {split!r} ({e}); fetch again") from None
    return "".join(parts)
