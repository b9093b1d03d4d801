"""publish() and fetch() through a real S3 server (SeaweedFS from the `stack` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import MNIST_DIR, SHAKESPEARE, CallLog, list_objects, unique_images

import zoo.data.publishing as publishing_mod
from zoo.data import (
    FORMAT,
    LocalDataset,
    RawImages,
    RawText,
    fetch,
    fingerprint,
    load_source,
    load_split_arrays,
    publish,
    split,
    text_split,
)
from zoo.errors import ConfigError, DataError

pytestmark = pytest.mark.stack


def prefix_of(fp: str) -> str:
    return f"datasets/{fp}/"


def test_publish_fetch_round_trip_real_mnist(store, tmp_path: Path) -> None:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"no MNIST at {MNIST_DIR}")
    raw = load_source(f"idx:{MNIST_DIR}")
    parts = split(raw, 0.1)
    m = publish(parts, store, source=raw.source, shards=4)

    fp = fingerprint(parts)
    assert m["format"] == FORMAT and m["kind"] == "image" and m["fingerprint"] == fp
    assert m["uri"] == store.uri(f"datasets/{fp}/manifest.json") and store.exists(m["uri"])
    assert m["shape"] == [28, 28, 1] and m["dtype"] == "uint8" and m["num_classes"] == 10
    assert m["source"] == raw.source and m["genpipe_version"]
    assert {k: v["count"] for k, v in m["splits"].items()} == {"train": 9000, "test": 1000}
    assert [s["count"] for s in m["splits"]["train"]["shards"]] == [2250] * 4
    assert sum(m["stats"]["label_histogram"]["test"]) == 1000
    assert 0 < m["stats"]["mean"] < 255 and m["stats"]["max"] == 255
    assert store.get_json(m["uri"]) == m  # the return value is exactly what was stored

    local = fetch(m["uri"], store, tmp_path / "cache")
    assert isinstance(local, LocalDataset) and local.dir == tmp_path / "cache" / fp
    assert local.manifest == m and local.count("test") == 1000
    assert all(p.is_file() for p in local.paths("train")) and len(local.paths("train")) == 4
    x, y = load_split_arrays(local, "test")
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, parts["test"].images) and np.array_equal(y, parts["test"].labels)
    x, y = load_split_arrays(local, "train")
    assert np.array_equal(x, parts["train"].images) and np.array_equal(y, parts["train"].labels)


def test_text_round_trip(store, tmp_path: Path) -> None:
    raw = load_source(f"text:{SHAKESPEARE}")
    parts = split(raw)
    m = publish(parts, store, source=raw.source)
    assert m["kind"] == "text" and m["shape"] is None and m["num_classes"] is None
    assert [s["key"].rsplit("/", 1)[-1] for s in m["splits"]["val"]["shards"]] == ["val.txt"]
    assert m["stats"]["chars"] == len(raw.text) and m["stats"]["distinct_chars"] == 65
    assert m["stats"]["lines"] == raw.text.count("\n")
    local = fetch(m["uri"], store, tmp_path)
    assert text_split(local, "train") == parts["train"].text
    assert text_split(local, "val") == parts["val"].text
    assert set(m["stats"]["vocab"]) == set(raw.text)


def test_second_publish_writes_nothing(store, s3_calls) -> None:
    parts = split(unique_images(40))
    m1 = publish(parts, store, source="first", shards=3)
    before = list_objects(store, prefix_of(m1["fingerprint"]))
    assert len(before) == 2 * 3 + 1  # two splits of three shards, plus the manifest

    calls = s3_calls(store)
    m2 = publish(parts, store, source="second/path", shards=3)
    assert calls.names("put_object") == []
    assert list_objects(store, prefix_of(m1["fingerprint"])) == before  # same etags and times
    assert m2 == m1 and m2["source"] == "first"


def test_second_publish_checks_with_one_listing_and_one_read(store, monkeypatch) -> None:
    """A re-run on unchanged data (every warm `genpipe run`'s ingest) asks the store twice: one
    listing of the dataset's prefix answers for the manifest and every shard, one GET reads
    the manifest (it was a stat per shard, one after another, and one for the manifest)."""
    parts = split(unique_images(40))
    publish(parts, store, source="t", shards=4)
    calls = CallLog(
        monkeypatch, store.client, "stat_object", "list_objects", "get_object", "put_object"
    )
    publish(parts, store, source="t", shards=4)
    assert sorted(m for m, _ in calls.calls) == ["get_object", "list_objects"], calls.calls


def test_publish_replaces_a_shard_stored_with_another_size(store) -> None:
    """A shard cut short (an object of another size than the manifest lists) counts as
    missing: the dataset is published again, the shard whole."""
    parts = split(unique_images(20))
    m = publish(parts, store, source="t", shards=2)
    shard = m["splits"]["train"]["shards"][0]
    whole = store.get_bytes(shard["key"])
    store.put_bytes(shard["key"], whole[:-7])
    again = publish(parts, store, source="t", shards=2)
    assert store.get_bytes(shard["key"]) == whole
    assert again["splits"] == m["splits"]


def test_manifest_is_the_last_object_written(store, s3_calls) -> None:
    parts = split(unique_images(30))
    calls = s3_calls(store)
    m = publish(parts, store, source="t", shards=2)
    puts = calls.names("put_object")
    assert puts[-1] == f"datasets/{m['fingerprint']}/manifest.json"
    assert sum(p.endswith("manifest.json") for p in puts) == 1
    assert len(puts) == 1 + sum(len(s["shards"]) for s in m["splits"].values())


def test_interrupted_publish_leaves_no_manifest_and_a_rerun_completes(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = split(unique_images(40))
    fp = fingerprint(parts)
    real_put = publishing_mod._put_shard
    done: list[str] = []

    def crash_after_two(st, uri, path) -> None:  # noqa: ANN001
        if len(done) == 2:
            raise RuntimeError("simulated crash during publish")
        real_put(st, uri, path)
        done.append(uri)

    monkeypatch.setattr(publishing_mod, "_put_shard", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        publish(parts, store, source="t", shards=4)
    written = list_objects(store, prefix_of(fp))
    assert len(written) == 2 and not any(k.endswith("manifest.json") for k in written)
    with pytest.raises(DataError, match="cannot read the dataset manifest"):
        fetch(store.uri(f"datasets/{fp}/manifest.json"), store, tmp_path)

    monkeypatch.setattr(publishing_mod, "_put_shard", real_put)
    m = publish(parts, store, source="t", shards=4)
    assert len(list_objects(store, prefix_of(fp))) == 2 * 4 + 1
    x, y = load_split_arrays(fetch(m["uri"], store, tmp_path), "train")
    assert np.array_equal(x, parts["train"].images) and np.array_equal(y, parts["train"].labels)


def test_publish_replaces_a_manifest_whose_objects_are_missing(store) -> None:
    parts = split(unique_images(20))  # 18 train, 2 test
    m = publish(parts, store, source="t", shards=4)
    assert [s["count"] for s in m["splits"]["test"]["shards"]] == [1, 1]  # no empty shards
    gone = m["splits"]["test"]["shards"][0]["key"]
    store.delete_prefix(gone)
    assert not store.exists(gone)
    again = publish(parts, store, source="t", shards=4)
    assert store.exists(gone)
    # Same data -> byte-identical objects (so concurrent publishers cannot disagree).
    assert again["splits"] == m["splits"]


def test_invalid_splits_write_nothing(store, s3_calls) -> None:
    calls = s3_calls(store)
    bad = {
        "train": RawImages(np.zeros((4, 4, 4, 1), np.float32), None, "bad"),
        "test": unique_images(2),
    }
    with pytest.raises(
        DataError,
        match=r"bad: the 'train' split \(train 4 images, test 2 images\) is unusable: images have dtype float32",
    ):
        publish(bad, store, source="bad")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="mix kinds"):
        publish({"train": unique_images(4), "val": RawText("ab", "t")}, store, source="x")
    with pytest.raises(ConfigError, match="shards=0"):
        publish(split(unique_images(10)), store, source="x", shards=0)
    assert calls.names("put_object") == []


def test_bad_sources_write_nothing(store, tmp_path: Path) -> None:
    """The ingest flow (load -> split -> publish) on each bad file stops before any write."""
    from test_data_sources import BAD_FILES, build_bad

    before = list_objects(store, "")
    for case in sorted(BAD_FILES):
        d = tmp_path / case.replace(" ", "_")
        d.mkdir()
        spec, named = build_bad(d, case)
        with pytest.raises(DataError, match=named):
            publish(split(load_source(spec, store)), store, source=spec)
    assert list_objects(store, "") == before


def test_fetch_detects_sha256_mismatch(store, tmp_path: Path) -> None:
    parts = split(unique_images(20))
    m = publish(parts, store, source="t", shards=2)
    victim = m["splits"]["train"]["shards"][1]
    store.put_bytes(victim["key"], b"tampered")
    with pytest.raises(DataError, match="sha256") as e:
        fetch(m["uri"], store, tmp_path)
    assert victim["key"] in str(e.value)
    d = tmp_path / m["fingerprint"]
    assert not (d / "manifest.json").exists()
    left = sorted(p.name for p in d.iterdir())
    assert "train-00001-of-00002.tfrecord" not in left
    assert not [n for n in left if n.startswith(".")]  # no partial downloads left behind


def test_second_fetch_downloads_nothing(store, tmp_path: Path, s3_calls) -> None:
    m = publish(split(unique_images(20)), store, source="t", shards=2)
    first = fetch(m["uri"], store, tmp_path)
    calls = s3_calls(store)
    second = fetch(m["uri"], store, tmp_path)
    assert calls.calls == []
    assert second.manifest == first.manifest and second.shards == first.shards

    # A damaged local copy is noticed (size check) and fetched again.
    first.paths("train")[0].write_bytes(b"x")
    third = fetch(m["uri"], store, tmp_path)
    assert len(calls.names("get_object")) >= 1
    assert np.array_equal(
        load_split_arrays(third, "train")[0], load_split_arrays(second, "train")[0]
    )


def test_fetch_of_missing_or_foreign_manifest(store, tmp_path: Path) -> None:
    store.ensure_bucket()
    with pytest.raises(DataError, match="cannot read the dataset manifest"):
        fetch(store.uri("datasets/nothing-here/manifest.json"), store, tmp_path)
    store.put_json(store.uri("not-a-dataset/manifest.json"), {"format": "other/v9"})
    with pytest.raises(DataError, match="not a dataset manifest"):
        fetch(store.uri("not-a-dataset/manifest.json"), store, tmp_path)
    store.put_bytes(store.uri("broken/manifest.json"), b"{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        fetch(store.uri("broken/manifest.json"), store, tmp_path)


def test_local_dataset_open_and_split_errors(store, tmp_path: Path) -> None:
    m = publish(split(unique_images(20)), store, source="t", shards=1)
    local = LocalDataset.open(fetch(m["uri"], store, tmp_path).dir)
    assert local.fingerprint == m["fingerprint"] and local.shape == (8, 8, 1)
    assert sorted(local.splits) == ["test", "train"] and local.num_classes == m["num_classes"]
    with pytest.raises(DataError, match="no split 'val'; valid: test, train"):
        local.paths("val")
    with pytest.raises(DataError, match="holds image data, not text"):
        text_split(local, "train")
    with pytest.raises(DataError, match="no readable fetched dataset"):
        LocalDataset.open(tmp_path / "nope")
    json.loads((local.dir / "manifest.json").read_text())  # the local manifest is plain JSON
