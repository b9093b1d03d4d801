"""Loading sources: digits, real MNIST IDX, npz, text; and every bad input -> one-line DataError."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import MNIST_DIR, SHAKESPEARE, idx_bytes

from zoo.data import RawImages, RawText, load_source
from zoo.errors import ConfigError, DataError

needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST at {MNIST_DIR}")


def test_digits_is_mnist_shaped() -> None:
    raw = load_source("digits")
    assert isinstance(raw, RawImages)
    assert raw.images.shape == (1797, 28, 28, 1) and raw.images.dtype == np.uint8
    assert raw.labels is not None and raw.labels.dtype == np.int64
    assert sorted(set(raw.labels.tolist())) == list(range(10))
    assert raw.images.max() == 255  # stretched from 0..16
    # 20x20 digit centred on a 28x28 canvas: a 4-pixel empty border, like MNIST.
    assert raw.images[:, :4].max() == 0 and raw.images[:, -4:].max() == 0
    assert raw.images[:, 4:24, 4:24].mean() > 20


@needs_mnist
def test_real_mnist_idx_directory() -> None:
    raw = load_source(f"idx:{MNIST_DIR}")
    assert isinstance(raw, RawImages)
    assert raw.images.shape == (10000, 28, 28, 1) and raw.images.dtype == np.uint8
    assert raw.labels is not None and raw.labels.shape == (10000,)
    hist = np.bincount(raw.labels)
    assert len(hist) == 10 and hist.sum() == 10000 and hist.min() > 800
    assert raw.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first t10k labels


@needs_mnist
def test_idx_single_file_and_uncompressed_give_same_arrays(tmp_path: Path) -> None:
    gz = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    from_file = load_source(f"idx:{gz}")
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes()))
    plain = load_source(f"idx:{tmp_path}")
    assert np.array_equal(from_file.images, plain.images)
    assert np.array_equal(from_file.labels, plain.labels)


def test_idx_directory_puts_train_before_t10k(write_idx) -> None:
    train = np.full((3, 6, 6), 1, np.uint8)
    test = np.full((2, 6, 6), 2, np.uint8)
    write_idx("mnist/t10k-images-idx3-ubyte.gz", test)
    write_idx("mnist/t10k-labels-idx1-ubyte.gz", np.array([8, 9], np.uint8))
    write_idx("mnist/train-images-idx3-ubyte", train)
    p = write_idx("mnist/train-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    raw = load_source(f"idx:{p.parent}")
    assert raw.images[:, 0, 0, 0].tolist() == [1, 1, 1, 2, 2]
    assert raw.labels.tolist() == [1, 2, 3, 8, 9]


def test_idx_without_labels_file(write_idx) -> None:
    p = write_idx("x/data-images-idx3-ubyte", np.zeros((4, 5, 5), np.uint8))
    raw = load_source(f"idx:{p}")
    assert raw.labels is None and raw.images.shape == (4, 5, 5, 1)


def test_npz_uint8_and_float_forms(tmp_path: Path) -> None:
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 3]))
    a = load_source(f"npz:{tmp_path / 'a.npz'}")
    assert a.images.shape == (2, 4, 4, 1) and a.labels.tolist() == [0, 3]
    f = np.zeros((2, 4, 4, 1), np.float32)
    f[0, :2, :2, 0] = [[0.5, 1.0], [0.4 / 255, 0.6 / 255]]
    np.savez(tmp_path / "b.npz", images=f)
    b = load_source(f"npz:{tmp_path / 'b.npz'}")
    assert b.labels is None and b.images.dtype == np.uint8 and b.images.shape == (2, 4, 4, 1)
    assert b.images[0, :2, :2, 0].tolist() == [[128, 255], [0, 1]]  # rounded, not truncated


def test_text_source() -> None:
    raw = load_source(f"text:{SHAKESPEARE}")
    assert isinstance(raw, RawText) and len(raw.text) == 1_115_394
    assert raw.text.startswith("First Citizen:")


def test_text_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_bytes("\ufeffhéllo".encode())
    assert load_source(f"text:{tmp_path / 't.txt'}").text == "héllo"


# --- bad inputs: (file name, bytes) -> expected message fragment -------------------------------

_IMG = np.arange(3 * 6 * 6, dtype=np.uint8).reshape(3, 6, 6)
_GOOD_GZ = gzip.compress(idx_bytes(_IMG), mtime=0)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


BAD_FILES: dict[str, tuple[dict[str, bytes], str, str]] = {
    # case: ({file name: content}, spec scheme + file it points at, message fragment)
    "corrupt gz": (
        {"c-images-idx3-ubyte.gz": _GOOD_GZ[:20] + b"\xff" * 40 + _GOOD_GZ[60:]},
        "idx:c-images-idx3-ubyte.gz",
        "corrupt or truncated gzip",
    ),
    "truncated gz": (
        {"t-images-idx3-ubyte.gz": _GOOD_GZ[: len(_GOOD_GZ) // 2]},
        "idx:t-images-idx3-ubyte.gz",
        "corrupt or truncated gzip",
    ),
    "not gzip but named .gz": (
        {"n-images-idx3-ubyte.gz": idx_bytes(_IMG)},
        "idx:n-images-idx3-ubyte.gz",
        "not gzip data",
    ),
    "truncated IDX": (
        {"u-images-idx3-ubyte": idx_bytes(_IMG)[:-10]},
        "idx:u-images-idx3-ubyte",
        "truncated inside record 2 of 3",
    ),
    "trailing bytes": (
        {"v-images-idx3-ubyte": idx_bytes(_IMG) + b"\0"},
        "idx:v-images-idx3-ubyte",
        "trailing bytes",
    ),
    "wrong magic": (
        {"w-images-idx3-ubyte": b"\x12\x34" + idx_bytes(_IMG)[2:]},
        "idx:w-images-idx3-ubyte",
        "magic 0x12340803",
    ),
    "wrong dims": (
        {"d-images-idx3-ubyte": idx_bytes(np.zeros((3, 6), np.uint8))},
        "idx:d-images-idx3-ubyte",
        "valid: [N, H, W]",
    ),
    "float IDX images": (
        {"f-images-idx3-ubyte": idx_bytes(np.zeros((3, 6, 6), np.float32))},
        "idx:f-images-idx3-ubyte",
        "valid: unsigned byte",
    ),
    "label count mismatch": (
        {
            "m-images-idx3-ubyte": idx_bytes(_IMG),
            "m-labels-idx1-ubyte": idx_bytes(np.array([1, 2], np.uint8)),
        },
        "idx:m-images-idx3-ubyte",
        "2 labels but m-images-idx3-ubyte has 3 images",
    ),
    "empty IDX": (
        {"e-images-idx3-ubyte": idx_bytes(np.zeros((0, 28, 28), np.uint8))},
        "idx:e-images-idx3-ubyte",
        "no images",
    ),
    "empty file": (
        {"z-images-idx3-ubyte": b""},
        "idx:z-images-idx3-ubyte",
        "shorter than the 4-byte magic",
    ),
    "idx dir without images": ({"README": b"hi"}, "idx:.", "no *images-idx3-ubyte"),
    "non-UTF-8 text": ({"bad.txt": b"hello \xff world"}, "text:bad.txt", "byte offset 6"),
    "empty text": ({"empty.txt": b""}, "text:empty.txt", "text is empty"),
    "one-character text": ({"aaa.txt": b"aaaa"}, "text:aaa.txt", "1 distinct character"),
    "npz int32 images": (
        {"i.npz": _npz(x=np.zeros((2, 4, 4), np.int32))},
        "npz:i.npz",
        "dtype int32",
    ),
    "npz float out of range": (
        {"r.npz": _npz(x=np.full((2, 4, 4), 1.5, np.float32))},
        "npz:r.npz",
        "valid: uint8 0..255 or float in [0, 1]",
    ),
    "npz float NaN": (
        {"nan.npz": _npz(x=np.full((2, 4, 4), np.nan, np.float32))},
        "npz:nan.npz",
        "float in [0, 1]",
    ),
    "npz missing key": (
        {"k.npz": _npz(pixels=np.zeros((2, 4, 4), np.uint8))},
        "npz:k.npz",
        "valid keys: x",
    ),
    "npz negative label": (
        {"neg.npz": _npz(x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, -2, 1]))},
        "npz:neg.npz",
        "record 1: label -2 is negative",
    ),
    "npz 2 channels": (
        {"c2.npz": _npz(x=np.zeros((3, 4, 4, 2), np.uint8))},
        "npz:c2.npz",
        "2 channels",
    ),
    "npz tiny images": ({"s.npz": _npz(x=np.zeros((3, 2, 2), np.uint8))}, "npz:s.npz", "2x2"),
    "not an npz": ({"junk.npz": b"PK\x03\x04 garbage"}, "npz:junk.npz", "not a readable .npz"),
    "missing file": ({}, "text:nope.txt", "cannot read"),
}


# Cases whose message names another file than the one the spec points at.
NAMED = {"label count mismatch": "m-labels-idx1-ubyte"}


def build_bad(tmp_path: Path, case: str) -> tuple[str, str]:
    """Write a bad case's files into tmp_path; return (spec, the file the message must name)."""
    files, spec, _ = BAD_FILES[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    scheme, _, rel = spec.partition(":")
    path = (tmp_path / rel).resolve() if rel != "." else tmp_path
    return f"{scheme}:{path}", str(tmp_path / NAMED[case]) if case in NAMED else str(path)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_raises_one_line_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    spec, named = build_bad(tmp_path, case)
    with pytest.raises(DataError) as e:
        load_source(spec)
    msg = str(e.value)
    assert named in msg, msg
    assert BAD_FILES[case][2] in msg, msg
    assert "\n" not in msg


def test_unknown_scheme_lists_the_valid_ones() -> None:
    for spec in ("ftp://x/y", "/plain/path", "mnist", ""):
        with pytest.raises(DataError, match=r"unknown data source .*valid: digits, idx:PATH"):
            load_source(spec)


def test_s3_source_needs_a_store() -> None:
    with pytest.raises(ConfigError, match="no store"):
        load_source("s3://bucket/prefix")


def test_labels_file_and_gz_duplicate_is_an_error(write_idx) -> None:
    write_idx("d/a-images-idx3-ubyte", _IMG)
    write_idx("d/a-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    p = write_idx("d/a-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8))
    with pytest.raises(DataError, match="keep one"):
        load_source(f"idx:{p.parent}")


def test_mixed_labelled_and_unlabelled_idx_files(write_idx, tmp_path: Path) -> None:
    write_idx("d/train-images-idx3-ubyte", _IMG)
    write_idx("d/train-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    write_idx("d/t10k-images-idx3-ubyte", _IMG)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: no matching"):
        load_source(f"idx:{tmp_path / 'd'}")


def test_read_only_shared_data_is_not_modified(tmp_path: Path) -> None:
    # Loading must never write next to its inputs (the shared data directory is read-only).
    if not MNIST_DIR.is_dir():
        pytest.skip("no MNIST")
    shutil.copytree(MNIST_DIR, tmp_path / "m")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    load_source(f"idx:{tmp_path / 'm'}")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before


def test_digits_are_made_once_per_process_and_each_caller_gets_its_own_copy() -> None:
    """1,797 resizes per ingest were 0.2-0.5 s of every `digits` run: computed once (the warm
    server does it before forking its tasks), the same bytes each time, never shared."""
    from zoo.data import sources

    sources._digits.cache_clear()
    first = load_source("digits", None)
    second = load_source("digits", None)
    assert sources._digits.cache_info().misses == 1 and sources._digits.cache_info().hits >= 1
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.labels, second.labels)
    first.images[0] = 255  # a caller's copy is its own
    assert not np.array_equal(first.images[0], second.images[0])
    assert not np.array_equal(sources.load_digits().images[0], first.images[0])
