"""image_dataset(), load_split_arrays(), text_split() on a dataset published to the real S3."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import unique_images

from zoo.data import (
    LocalDataset,
    RawImages,
    fetch,
    image_dataset,
    load_source,
    load_split_arrays,
    publish,
    split,
)
from zoo.errors import ConfigError, DataError
from zoo.storage import ObjectStore

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def digits(stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalDataset, dict]:
    """scikit-learn digits (1,617 train / 180 test) published in 3 shards per split and fetched."""
    store = ObjectStore.from_env()
    parts = split(load_source("digits"))
    m = publish(parts, store, source="digits", shards=3)
    return fetch(m["uri"], store, tmp_path_factory.mktemp("cache")), parts


def epoch(ds) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    xs, ys = zip(*((b["image"].numpy(), b["label"].numpy()) for b in ds), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_batches_have_the_documented_shapes_dtypes_and_range(digits) -> None:
    local, parts = digits
    ds = image_dataset(local, "train", batch_size=100, seed=1)
    batch = next(iter(ds))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (100, 28, 28, 1) and batch["image"].dtype.name == "float32"
    assert batch["label"].shape == (100,) and batch["label"].dtype.name == "int64"
    x, y = epoch(ds)
    assert x.shape == (1617, 28, 28, 1) and x.min() >= 0.0 and x.max() == 1.0
    # A permutation of the split: same multiset of labels and of images.
    assert sorted(y.tolist()) == sorted(parts["train"].labels.tolist())
    assert np.isclose(x.sum(), parts["train"].images.astype(np.float64).sum() / 255.0, rtol=1e-6)


def test_same_seed_same_order_other_seed_other_order(digits) -> None:
    local, _ = digits
    x1, y1 = epoch(image_dataset(local, "train", 64, seed=7))
    x2, y2 = epoch(image_dataset(local, "train", 64, seed=7))
    _, y3 = epoch(image_dataset(local, "train", 64, seed=8))
    assert np.array_equal(y1, y2) and np.array_equal(x1, x2)
    assert not np.array_equal(y1, y3)


def test_unshuffled_order_is_record_order(digits) -> None:
    local, parts = digits
    x, y = epoch(image_dataset(local, "test", 32, shuffle=False))
    assert np.array_equal(y, parts["test"].labels)
    assert np.array_equal(np.rint(x * 255).astype(np.uint8), parts["test"].images)


def test_drop_remainder_and_repeat(digits) -> None:
    local, parts = digits
    sizes = [b["image"].shape[0] for b in image_dataset(local, "test", 50, shuffle=False)]
    assert sizes == [50, 50, 50, 30]
    dropped = image_dataset(local, "test", 50, drop_remainder=True)
    assert [b["image"].shape[0] for b in dropped] == [50, 50, 50]
    assert dropped.element_spec["image"].shape.as_list() == [50, 28, 28, 1]

    def two_epochs() -> np.ndarray:  # 6 batches of 60 = two passes over the 180 test images
        forever = image_dataset(local, "test", 60, repeat=True, seed=3)
        return np.concatenate([b["label"].numpy() for b in forever.take(6)])

    y = two_epochs()
    assert np.array_equal(y, two_epochs())  # a fresh pipeline with the same seed: same stream
    expected = sorted(parts["test"].labels.tolist())
    assert sorted(y[:180].tolist()) == expected and sorted(y[180:].tolist()) == expected
    assert not np.array_equal(y[:180], y[180:])  # reshuffled between epochs


def test_load_split_arrays_matches_the_published_split(digits) -> None:
    local, parts = digits
    x, y = load_split_arrays(local, "test")
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, parts["test"].images) and np.array_equal(y, parts["test"].labels)


def test_unlabelled_images_get_label_minus_one(store, tmp_path) -> None:
    raw = unique_images(20, shape=(5, 6, 3), labels=False)
    m = publish(split(raw), store, source="t", shards=2)
    assert m["num_classes"] is None and m["stats"]["label_histogram"] is None
    local = fetch(m["uri"], store, tmp_path)
    x, y = load_split_arrays(local, "train")
    assert x.shape == (18, 5, 6, 3) and (y == -1).all()
    b = next(iter(image_dataset(local, "train", 4)))
    assert b["image"].shape == (4, 5, 6, 3) and b["label"].numpy().tolist() == [-1] * 4


def test_folder_classes_reach_the_manifest(store, tmp_path) -> None:
    raw = unique_images(10)
    raw = RawImages(raw.images, raw.labels % 2, raw.source, classes=["cat", "dog", "eel"])
    m = publish(split(raw), store, source="t", shards=1)
    assert m["classes"] == ["cat", "dog", "eel"] and m["num_classes"] == 3
    assert [len(h) for h in m["stats"]["label_histogram"].values()] == [3, 3]


def test_reader_errors(digits, store, tmp_path) -> None:
    local, _ = digits
    with pytest.raises(DataError, match="no split 'val'"):
        image_dataset(local, "val", 8)
    with pytest.raises(ConfigError, match="batch_size=0"):
        image_dataset(local, "train", 0)
    from zoo.data import RawText

    text = publish(split(RawText("abc\n" * 30, "t")), store, source="t")
    with pytest.raises(DataError, match="holds text data, not image data"):
        load_split_arrays(fetch(text["uri"], store, tmp_path), "train")


def test_image_pipelines_are_built_without_autograph(digits, monkeypatch) -> None:
    """The parse and scale map functions are plain graph code: autograph's source conversion
    of them was pure tracing cost in every pipeline a run builds (issue 14)."""
    from tensorflow.python.autograph.impl import api as autograph_api

    local, _ = digits
    converted = []
    original = autograph_api._convert_actual

    def spy(entity, program_ctx):  # noqa: ANN001, ANN202
        converted.append(getattr(entity, "__qualname__", repr(entity)))
        return original(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", spy)
    local.__dict__.pop("_decoded_memo", None)  # build the decode pipeline anew
    batch = next(iter(image_dataset(local, "train", 8, seed=0)))
    assert batch["image"].dtype.name == "float32" and float(np.max(batch["image"])) <= 1.0
    assert converted == []
