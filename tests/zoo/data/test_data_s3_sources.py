"""`s3://bucket/prefix` sources on the real SeaweedFS: image folders, npz and text objects."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from data_helpers import list_objects
from PIL import Image

from zoo.data import RawImages, RawText, load_source, publish, split
from zoo.errors import DataError

pytestmark = pytest.mark.stack


def png(shape: tuple[int, ...], value: int = 0, mode: str | None = None, fmt: str = "PNG") -> bytes:
    arr = np.full(shape, value, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def prefix(store) -> str:
    """A fresh prefix in the session bucket."""
    store.ensure_bucket()
    return store.uri(f"sources/{uuid.uuid4().hex[:10]}")


def test_labelled_image_folder(store, prefix: str) -> None:
    # class = top folder under the prefix, indexed in sorted order; images sorted by key
    store.put_bytes(f"{prefix}/dog/b.png", png((6, 5), 20))
    store.put_bytes(f"{prefix}/cat/x/a.png", png((6, 5), 10))
    store.put_bytes(f"{prefix}/dog/a.jpg", png((6, 5), 30, fmt="JPEG"))
    store.put_bytes(f"{prefix}/cat/notes.md", b"ignored")
    raw = load_source(prefix, store)
    assert isinstance(raw, RawImages) and raw.source == prefix
    assert raw.images.shape == (3, 6, 5, 1) and raw.classes == ["cat", "dog"]
    assert raw.labels.tolist() == [0, 1, 1]
    assert raw.images[0].max() == 10 and raw.images[2].max() == 20
    assert abs(int(raw.images[1].mean()) - 30) <= 2  # JPEG is lossy


def test_flat_rgb_folder_has_no_labels_and_drops_alpha(store, prefix: str) -> None:
    store.put_bytes(f"{prefix}/1.png", png((4, 4, 3), 7))
    store.put_bytes(f"{prefix}/2.png", png((4, 4, 4), 9, mode="RGBA"))
    raw = load_source(prefix + "/", store)
    assert raw.labels is None and raw.classes is None
    assert raw.images.shape == (2, 4, 4, 3) and raw.images[1].max() == 9


def test_mixed_shapes_name_the_first_offending_file_and_write_nothing(store, prefix: str) -> None:
    store.put_bytes(f"{prefix}/a/1.png", png((8, 8)))
    store.put_bytes(f"{prefix}/a/2.png", png((8, 8)))
    store.put_bytes(f"{prefix}/b/3.png", png((9, 8)))
    store.put_bytes(f"{prefix}/b/4.png", png((8, 8, 3)))
    before = list_objects(store, "")
    with pytest.raises(DataError) as e:
        publish(split(load_source(prefix, store)), store, source=prefix)
    msg = str(e.value)
    assert msg.startswith(f"{prefix}/b/3.png: record 2: image is 9x8x1")
    assert f"{prefix}/a/1.png is 8x8x1" in msg
    assert list_objects(store, "") == before


@pytest.mark.parametrize(
    ("objects", "fragment"),
    [
        ({"a/1.png": b"not a png"}, "a/1.png: not a readable image"),
        ({"1.png": png((4, 4)), "c/2.png": png((4, 4))}, "1.png: sits directly under"),
        ({"x.npz": b"junk", "y.txt": b"text"}, "holds .npz and .txt objects"),
        ({"a.npz": b"1", "b.npz": b"2"}, "2 .npz objects"),
        (
            {"README.md": b"hello"},
            "no .npz, .txt or image (png/jpg) objects here (found: README.md)",
        ),
        ({}, "found: nothing"),
        ({"t/1.txt": b"ok", "t/2.txt": b"caf\xc3"}, "t/2.txt: not valid UTF-8 at byte offset 3"),
        ({"d.npz": b"junk"}, "d.npz: not a readable .npz file"),
    ],
)
def test_bad_s3_sources(store, prefix: str, objects: dict[str, bytes], fragment: str) -> None:
    for key, data in objects.items():
        store.put_bytes(f"{prefix}/{key}", data)
    with pytest.raises(DataError, match=None) as e:
        load_source(prefix, store)
    assert fragment in str(e.value) and prefix in str(e.value)


def test_missing_bucket(store) -> None:
    with pytest.raises(DataError, match="no-such-bucket-zz"):
        load_source("s3://no-such-bucket-zz/data", store)


def test_npz_object_by_prefix_or_exact_key(store, prefix: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=np.ones((3, 5, 5), np.uint8), labels=np.array([2, 0, 1]))
    store.put_bytes(f"{prefix}/data.npz", buf.getvalue())
    for spec in (prefix, f"{prefix}/data.npz"):
        raw = load_source(spec, store)
        assert raw.images.shape == (3, 5, 5, 1) and raw.labels.tolist() == [2, 0, 1]


def test_text_objects_are_joined_in_key_order(store, prefix: str) -> None:
    store.put_bytes(f"{prefix}/b.txt", "second ✓".encode())
    store.put_bytes(f"{prefix}/a.txt", b"first")  # no trailing newline: one is inserted
    store.put_bytes(f"{prefix}/c.txt", b"third\n")
    raw = load_source(prefix, store)
    assert isinstance(raw, RawText) and raw.text == "first\nsecond ✓\nthird\n"
