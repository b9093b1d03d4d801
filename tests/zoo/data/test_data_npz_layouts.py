"""The official npz layout of KMNIST, K49 and many others: one unnamed array per file
(`np.savez(path, array)` names it `arr_0`), labels in a sibling `X-labels.npz`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from zoo.data import load_source
from zoo.errors import DataError

N = 12


def _savez(path: Path, *args: np.ndarray, **kwargs: np.ndarray) -> Path:
    np.savez_compressed(path, *args, **kwargs)
    return path


def _images(n: int = N) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _labels(n: int = N) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)  # KMNIST stores labels as uint8


def test_kmnist_layout_by_convention(tmp_path: Path) -> None:
    x, y = _images(), _labels()
    imgs = _savez(tmp_path / "kmnist-train-imgs.npz", x)
    _savez(tmp_path / "kmnist-train-labels.npz", y)
    raw = load_source(f"npz:{imgs}")
    assert raw.images.shape == (N, 28, 28, 1)
    assert np.array_equal(raw.images[..., 0], x)
    assert raw.labels is not None and raw.labels.tolist() == y.tolist()


def test_single_unnamed_array_without_labels(tmp_path: Path) -> None:
    imgs = _savez(tmp_path / "faces-imgs.npz", _images())  # no faces-labels.npz beside it
    raw = load_source(f"npz:{imgs}")
    assert raw.images.shape == (N, 28, 28, 1) and raw.labels is None


def test_explicit_labels_file(tmp_path: Path) -> None:
    x, y = _images(), _labels()
    imgs = _savez(tmp_path / "train.npz", x)
    labels = _savez(tmp_path / "my-targets.npz", y)
    raw = load_source(f"npz:{imgs},labels={labels}")
    assert raw.labels is not None and raw.labels.tolist() == y.tolist()
    assert raw.source == f"npz:{imgs},labels={labels}"
    # labels=... may also hold a named `labels` array
    named = _savez(tmp_path / "named.npz", labels=y.astype(np.int64))
    assert load_source(f"npz:{imgs},labels={named}").labels.tolist() == y.tolist()


@pytest.mark.parametrize(
    ("files", "spec", "fragments"),
    [
        (  # two arrays, none of them named: which are the images?
            {"two.npz": ((_images(), _images()), {})},
            "npz:{d}/two.npz",
            ["two.npz", "found keys: ['arr_0', 'arr_1']", "valid keys: x or images", "arr_0"],
        ),
        (
            {"a-imgs.npz": ((_images(),), {}), "a-labels.npz": ((_labels(N - 2),), {})},
            "npz:{d}/a-imgs.npz",
            ["a-labels.npz", "10 labels for 12 images", "a-imgs.npz", "one label per image"],
        ),
        (
            {"b.npz": ((_images(),), {}), "bl.npz": ((np.zeros((N, 2), np.uint8),), {})},
            "npz:{d}/b.npz,labels={d}/bl.npz",
            ["bl.npz", "shape [12, 2]", "valid: [N] of integers"],
        ),
        (
            {"c.npz": ((), {"x": _images(), "y": _labels()}), "cl.npz": ((_labels(),), {})},
            "npz:{d}/c.npz,labels={d}/cl.npz",
            ["c.npz", "cl.npz", "valid: one source of labels"],
        ),
        (
            {"e.npz": ((_images(),), {})},
            "npz:{d}/e.npz,labels={d}/missing.npz",
            ["missing.npz", "cannot read"],
        ),
        (
            {"f.npz": ((_images(),), {})},
            "npz:{d}/f.npz,targets=x.npz",
            ["targets=x.npz", "valid: npz:IMAGES.npz,labels=LABELS.npz"],
        ),
        (
            {"g.npz": ((_images(),), {}), "gl.npz": ((_labels(), _labels()), {})},
            "npz:{d}/g.npz,labels={d}/gl.npz",
            ["gl.npz", "no labels array", "valid: y or labels, or one unnamed array"],
        ),
    ],
    ids=[
        "two-unnamed",
        "label-count",
        "label-shape",
        "labels-twice",
        "no-labels-file",
        "bad-option",
        "two-label-arrays",
    ],
)
def test_bad_layouts_one_line(tmp_path: Path, files: dict, spec: str, fragments: list[str]) -> None:
    for name, (args, kwargs) in files.items():
        _savez(tmp_path / name, *args, **kwargs)
    with pytest.raises(DataError) as e:
        load_source(spec.format(d=tmp_path))
    msg = str(e.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_kmnist_layout_on_the_object_store(store, tmp_path: Path) -> None:
    x, y = _images(), _labels()
    prefix = store.uri(f"test-npz-layouts/{tmp_path.name}")
    for name, arr in (("k49-imgs.npz", x), ("k49-labels.npz", y)):
        buf = io.BytesIO()
        np.savez(buf, arr)
        store.put_bytes(f"{prefix}/{name}", buf.getvalue())
    for spec in (prefix, f"{prefix}/k49-imgs.npz"):
        raw = load_source(spec, store)
        assert np.array_equal(raw.images[..., 0], x), spec
        assert raw.labels is not None and raw.labels.tolist() == y.tolist(), spec
