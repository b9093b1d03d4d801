"""split() and fingerprint(): deterministic, sized as documented, content- (not path-) addressed."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import MNIST_DIR, unique_images

from zoo.data import RawImages, RawText, fingerprint, load_source, publish, split
from zoo.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def mnist() -> RawImages:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"no MNIST at {MNIST_DIR}")
    return load_source(f"idx:{MNIST_DIR}")  # type: ignore[return-value]


def test_mnist_split_is_first_9000_train_last_1000_test(mnist: RawImages) -> None:
    parts = split(mnist, 0.1)
    assert set(parts) == {"train", "test"}
    train, test = parts["train"], parts["test"]
    assert len(train) == 9000 and len(test) == 1000
    assert np.array_equal(train.images, mnist.images[:9000])
    assert np.array_equal(test.images, mnist.images[9000:])
    assert np.array_equal(test.labels, mnist.labels[9000:])
    again = split(mnist, 0.1)
    assert np.array_equal(again["test"].images, test.images)


def test_text_split_at_character_boundary() -> None:
    text = "ab" + "é✓" * 50  # multi-byte characters near the cut
    parts = split(RawText(text, "t"), 0.1)
    assert set(parts) == {"train", "val"}
    assert len(parts["val"].text) == 10 and len(parts["train"].text) == 92
    assert parts["train"].text + parts["val"].text == text
    parts["val"].text.encode("utf-8")  # whole characters on both sides


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.1", None])
def test_bad_test_fraction_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        split(unique_images(10), bad)  # type: ignore[arg-type]


def test_split_that_would_be_empty_is_a_data_error() -> None:
    with pytest.raises(DataError, match="empty held-out split"):
        split(unique_images(4), 0.1)  # round(0.4) = 0 test images
    with pytest.raises(DataError, match="empty training split"):
        split(unique_images(2), 0.9)
    with pytest.raises(DataError, match="empty held-out split"):
        split(RawText("ab", "t"), 0.1)


def test_split_trusts_loaded_data_and_publish_still_rejects_bad_splits() -> None:
    """split() takes data as load_source returns it (validated there) and re-checks nothing
    but test_fraction and sizes; publish checks what it writes before any I/O."""
    parts = split(RawImages(np.zeros((10, 4, 4, 1)), None, "x"), 0.1)
    with pytest.raises(DataError, match=r"^x: the 'train' split .* images have dtype float64"):
        publish(parts, None, source="x")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="expected RawImages or RawText, got dict"):
        split({"images": []}, 0.1)  # type: ignore[arg-type]


def test_ingest_path_validates_each_thing_once(
    monkeypatch: pytest.MonkeyPatch, store, tmp_path
) -> None:
    """load_source -> split -> publish: the loaded data is validated once (in load_source),
    each split once (in publish, before writing); no step repeats another's check."""
    import sys

    # (the package attribute `zoo.data.validate` is the function, so look the module up)
    real = sys.modules["zoo.data.validate"].validate
    seen: list[int] = []

    def spy(raw: object) -> None:
        seen.append(id(raw))
        real(raw)  # type: ignore[arg-type]

    # Every module of the data layer that holds the function, whatever its import style.
    for name, mod in list(sys.modules.items()):
        if name.startswith("zoo.data") and getattr(mod, "validate", None) is real:
            monkeypatch.setattr(mod, "validate", spy)
    src = tmp_path / "t.txt"
    src.write_text("the quick brown fox jumps over the lazy dog\n" * 3)
    raw = load_source(f"text:{src}")
    parts = split(raw, 0.2)
    publish(parts, store, source=f"text:{src}")
    assert seen.count(id(raw)) == 1, seen
    assert sorted(seen) == sorted([id(raw), *(id(p) for p in parts.values())])


def test_fingerprint_is_stable_and_independent_of_source() -> None:
    raw = unique_images(20)
    a = split(raw)
    b = split(RawImages(raw.images.copy(), raw.labels.copy(), "somewhere/else"))
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64 and int(fingerprint(a), 16) >= 0
    text = RawText("hello world\n" * 10, "p1")
    assert fingerprint(split(text)) == fingerprint(split(RawText(text.text, "p2")))


def test_fingerprint_changes_with_any_content() -> None:
    raw = unique_images(20)
    base = fingerprint(split(raw))
    pixel = raw.images.copy()
    pixel[17, 3, 4, 0] ^= 1  # one pixel, one bit
    assert fingerprint(split(RawImages(pixel, raw.labels, raw.source))) != base
    label = raw.labels.copy()
    label[0] += 1
    assert fingerprint(split(RawImages(raw.images, label, raw.source))) != base
    assert fingerprint(split(RawImages(raw.images, None, raw.source))) != base
    assert fingerprint(split(raw, 0.2)) != base  # same records, other split point
    parts = split(raw)
    assert fingerprint({"train": parts["train"], "val": parts["test"]}) != base
    reshaped = RawImages(raw.images.reshape(20, 4, 16, 1), raw.labels, raw.source)
    assert fingerprint(split(reshaped)) != base
    t = fingerprint(split(RawText("hello world\n" * 10, "t")))
    assert fingerprint(split(RawText("hello world\n" * 9 + "hello World\n", "t"))) != t


def test_fingerprint_rejects_mixed_or_empty_splits() -> None:
    with pytest.raises(DataError, match="no splits"):
        fingerprint({})
    with pytest.raises(DataError, match="mix kinds"):
        fingerprint({"train": unique_images(4), "val": RawText("ab", "t")})
