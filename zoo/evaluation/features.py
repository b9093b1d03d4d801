"""The domain feature extractor behind FID/KID/precision/recall and the class checks.

A small CNN classifier trained deterministically (fixed seeds, fixed step count, fixed batch
order) on the dataset's train split with its labels; its penultimate layer (`FEATURE_DIM`
ReLU units) is the feature space and its softmax the class prediction. Datasets without
labels get a deterministic autoencoder instead: its bottleneck is the feature space and the
class-based checks are skipped (the evaluation says so in a `notes` text, never silently).

Cached in the object store by dataset fingerprint at
    datasets/<fingerprint>/feature_extractor/<VERSION>/{<sha256>.keras, manifest.json}
The .keras object is content-addressed and the manifest (pointer) is written last, so
concurrent or interrupted writers never publish a partial model; later runs reuse it, and
one process memoizes it in memory (the champion re-score does not reload it). Thread-safe:
the evaluate component loads it in a thread beside the held-out pass (zoo.evaluation.prepare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import GenpipeError

log = logging.getLogger(__name__)

VERSION = "v1"
FEATURE_DIM = 64
TRAIN_STEPS = 600
BATCH = 64
_MEMO: dict[str, FeatureExtractor] = {}
# One loader at a time: a second caller waits for the first one's extractor, never loads
# (or trains) its own copy; the split arrays likewise.
_LOCK = threading.Lock()
_SPLITS_LOCK = threading.Lock()


@dataclasses.dataclass
class FeatureExtractor:
    """A trained extractor: features for every dataset, class predictions when labelled."""

    model: Any  # keras.Model: image -> [features, class probabilities or reconstruction]
    kind: str  # "classifier" | "autoencoder"
    num_classes: int  # 0 for the autoencoder
    train_accuracy: float  # held-out accuracy for the classifier, NaN for the autoencoder
    uri: str = ""

    @property
    def has_classes(self) -> bool:
        return self.kind == "classifier"

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _as_float(x)
        feats, heads = [], []
        for i in range(0, len(x), 500):
            f, h = self.model(x[i : i + 500], training=False)
            feats.append(np.asarray(f))
            heads.append(np.asarray(h))
        return np.concatenate(feats), np.concatenate(heads)

    def features(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)[0].astype("float64")

    def features_and_predictions(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`features(x)` and, with classes, `predict(x)`, from one pass of the model."""
        feats, heads = self._run(x)
        return feats.astype("float64"), heads.argmax(axis=1) if self.has_classes else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.has_classes:
            raise GenpipeError("this dataset has no labels: the feature extractor has no classes")
        return self._run(x)[1].argmax(axis=1)


def split_arrays(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """`zoo.data.load_split_arrays`, read once per fetched dataset object (the extractor,
    the sample metrics and the figures all need the same splits; each read decodes the
    shards again), returned read-only as they are shared."""
    from zoo.data import load_split_arrays

    with _SPLITS_LOCK:
        memo = data.__dict__.setdefault("_eval_arrays_memo", {})
        if split not in memo:
            x, y = load_split_arrays(data, split)
            x.flags.writeable = y.flags.writeable = False
            memo[split] = (x, y)
        return memo[split]


def _as_float(x: np.ndarray) -> np.ndarray:
    return x.astype("float32") / 255.0 if x.dtype == np.uint8 else x.astype("float32")


def _build(shape: tuple[int, int, int], num_classes: int) -> Any:
    import keras

    inp = keras.Input(shape)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    feats = keras.layers.Dense(FEATURE_DIM, activation="relu", name="features")(h)
    if num_classes:
        head = keras.layers.Dense(num_classes, activation="softmax", name="classes")(feats)
    else:
        size = int(np.prod(shape))
        head = keras.layers.Reshape(shape, name="reconstruction")(
            keras.layers.Dense(size, activation="sigmoid")(feats)
        )
    return keras.Model(inp, [feats, head], name="feature_extractor")


def train_extractor(
    x: np.ndarray, y: np.ndarray | None, num_classes: int, steps: int = TRAIN_STEPS
) -> Any:
    """Deterministic training: fixed seeds, fixed steps, batch order from a seeded permutation."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1234)
    x = _as_float(x)
    classify = bool(num_classes) and y is not None
    model = _build(tuple(x.shape[1:]), num_classes if classify else 0)
    opt = keras.optimizers.Adam(1e-3)
    variables = model.trainable_variables

    @tf.function
    def step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            _, head = model(xb, training=True)
            if classify:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, head))
            else:
                loss = tf.reduce_mean(tf.square(head - xb))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    rng = np.random.default_rng(1234)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(steps * BATCH // len(x) + 1)])
    labels = (y if classify else np.zeros(len(x))).astype("int64")
    for s in range(steps):
        idx = order[s * BATCH : (s + 1) * BATCH]
        step(tf.constant(x[idx]), tf.constant(labels[idx]))
    return model


def _labels_usable(y: np.ndarray, num_classes: int | None) -> bool:
    return bool(num_classes) and num_classes >= 2 and len(y) > 0 and bool((y >= 0).all())


def get_extractor(data: Any, store: Any = None) -> FeatureExtractor:
    """The dataset's feature extractor: memoized, else from the object store, else trained."""
    fe = _get(data, store, train=True)
    assert fe is not None  # train=True: trained when not cached
    return fe


def load_cached_extractor(data: Any, store: Any = None) -> FeatureExtractor | None:
    """`get_extractor` when the extractor is memoized or in the object store, else None (and
    nothing trained): what may run in a thread beside other Keras work. Training sets the
    global seeds (keras.utils.set_random_seed), which other threads' Keras calls would
    consume meanwhile, so it is left to `get_extractor` on the evaluating thread."""
    return _get(data, store, train=False)


def _get(data: Any, store: Any, train: bool) -> FeatureExtractor | None:
    with _LOCK:
        fe = _MEMO.get(data.fingerprint)
        if fe is None:
            fe = _load_or_train(data, store, train)
            if fe is not None:
                _MEMO[data.fingerprint] = fe
        return fe


def _load_or_train(data: Any, store: Any, train: bool) -> FeatureExtractor | None:
    import keras

    fp = data.fingerprint
    if store is None:
        store = _default_store()
    prefix = f"datasets/{fp}/feature_extractor/{VERSION}"
    x, y = split_arrays(data, "train")
    classify = _labels_usable(y, data.num_classes)
    kind = "classifier" if classify else "autoencoder"
    k = int(data.num_classes) if classify else 0
    pointer = store.uri(f"{prefix}/manifest.json") if store else ""
    model, acc, uri = None, float("nan"), ""
    with tempfile.TemporaryDirectory(prefix="genpipe-features-") as tmp:
        path = Path(tmp) / "fe.keras"
        if store and store.exists(pointer):
            meta = store.get_json(pointer)
            store.get_file(meta["uri"], path)
            if hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]:
                model = keras.models.load_model(path, safe_mode=True, compile=False)
                acc, uri = float(meta["heldout_accuracy"]), meta["uri"]
            else:
                log.warning("feature extractor %s: checksum mismatch, retraining", meta["uri"])
        if model is None and not train:
            return None
        if model is None:
            model = train_extractor(x, y if classify else None, k)
            if classify and "test" in data.splits:
                xt, yt = split_arrays(data, "test")
                _, probs = model(_as_float(xt), training=False)
                acc = float(np.mean(np.asarray(probs).argmax(1) == yt))
            if store:
                model.save(path)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                uri = store.uri(f"{prefix}/{digest}.keras")
                store.put_file(uri, path)
                # Pointer last: a reader never sees a manifest whose model is not uploaded.
                store.put_json(
                    pointer,
                    {
                        "uri": uri,
                        "sha256": digest,
                        "kind": kind,
                        "num_classes": k,
                        "train_steps": TRAIN_STEPS,
                        "feature_dim": FEATURE_DIM,
                        "heldout_accuracy": acc,
                    },
                )
    return FeatureExtractor(model, kind, k, acc, uri)


def _default_store() -> Any:
    """The object store from the environment; None (train in memory, no cache) without one."""
    from zoo.storage import ObjectStore

    try:
        return ObjectStore.from_env()
    except GenpipeError as e:
        log.warning("no object store (%s): the feature extractor is trained but not cached", e)
        return None
