"""validate(): every rule, with the source and record named in one line."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data import RawImages, RawText, validate
from zoo.errors import DataError


def images(n: int = 5, shape: tuple[int, ...] = (6, 6, 1), dtype: str = "uint8") -> np.ndarray:
    return np.zeros((n, *shape), dtype)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (RawImages(images(dtype="float32"), None, "src:a"), "dtype float32; valid: uint8"),
        (RawImages(images(shape=(6, 6)), None, "src:b"), "shape [5, 6, 6]; valid: [N, H, W, C]"),
        (RawImages(images(n=0), None, "src:c"), "no images"),
        (RawImages(images(shape=(6, 6, 4)), None, "src:d"), "4 channels; valid: 1 (grey) or 3"),
        (RawImages(images(shape=(3, 6, 1)), None, "src:e"), "3x6; valid: height and width >= 4"),
        (
            RawImages(images(), np.array([0, 1, 2, 3]), "src:f"),
            "labels have shape [4] for 5 images",
        ),
        (
            RawImages(images(), np.zeros(5, np.float32), "src:g"),
            "labels are float32; valid: integers",
        ),
        (
            RawImages(images(), np.array([0, 1, 2, -1, 5]), "src:h"),
            "record 3: label -1 is negative",
        ),
        (
            RawImages(images(), np.array([0, 1, 2, 1, 0]), "src:i", classes=["a", "b"]),
            "record 2: label 2 but only 2 class names",
        ),
        (RawImages([[1]], None, "src:j"), "images are a list"),  # type: ignore[arg-type]
        (RawText("", "src:k"), "text is empty"),
        (RawText("zzzz", "src:l"), "1 distinct character"),
        (RawText("ok\ud800ok", "src:m"), "character offset 2"),
    ],
)
def test_invalid_data_is_rejected_naming_source(raw: RawImages | RawText, fragment: str) -> None:
    with pytest.raises(DataError) as e:
        validate(raw)
    assert str(e.value).startswith(f"{raw.source}: ")
    assert fragment in str(e.value)


def test_valid_data_passes() -> None:
    validate(RawImages(images(), None, "ok"))
    validate(RawImages(images(shape=(4, 9, 3)), np.arange(5, dtype=np.uint8), "ok"))
    validate(RawImages(images(), np.array([0, 1, 1, 0, 1]), "ok", classes=["cat", "dog"]))
    validate(RawText("ab", "ok"))
    validate(RawText("héllo wörld ✓", "ok"))


def test_not_raw_data() -> None:
    with pytest.raises(DataError, match="expected RawImages or RawText, got dict"):
        validate({"images": []})  # type: ignore[arg-type]
