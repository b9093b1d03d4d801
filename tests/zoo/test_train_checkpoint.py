"""The trainer's checkpoint publishing through the real object store (SeaweedFS)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import tensorflow as tf

from zoo.train_checkpoint import Checkpointer


def test_files_upload_at_once_and_the_pointer_last(store, tmp_path: Path, monkeypatch) -> None:
    """A checkpoint's files go up concurrently (a barrier only two concurrent uploads pass;
    one after another it times out), `latest.json` only after all of them, and a restore
    reads back what was saved."""
    v = tf.Variable([1.0, 2.0, 3.0])
    uri = store.uri(f"checkpoints/test-{uuid.uuid4().hex[:8]}")
    cp = Checkpointer(tf.train.Checkpoint(v=v), tmp_path / "ckpt", uri, store)
    barrier = threading.Barrier(2, timeout=10)
    order: list[str] = []
    real_put_file, real_put_json = store.put_file, store.put_json

    def put_file(u: str, path) -> None:  # noqa: ANN001
        barrier.wait()  # index + data: both in flight at once, or BrokenBarrierError
        real_put_file(u, path)
        order.append(u.rsplit("/", 1)[1])

    def put_json(u: str, obj) -> None:  # noqa: ANN001
        order.append(u.rsplit("/", 1)[1])
        real_put_json(u, obj)

    monkeypatch.setattr(store, "put_file", put_file)
    monkeypatch.setattr(store, "put_json", put_json)
    cp.save(7, {"epoch": 1})
    assert len(order) == 3 and order[-1] == "latest.json", order

    monkeypatch.setattr(store, "put_file", real_put_file)
    v.assign([0.0, 0.0, 0.0])
    latest = Checkpointer(tf.train.Checkpoint(v=v), tmp_path / "c2", uri, store).restore_latest()
    assert latest is not None and latest["step"] == 7
    assert v.numpy().tolist() == [1.0, 2.0, 3.0]


def test_a_failed_upload_writes_no_pointer(store, tmp_path: Path, monkeypatch) -> None:
    """One file's upload failing fails the save before `latest.json` is written."""
    uri = store.uri(f"checkpoints/test-{uuid.uuid4().hex[:8]}")
    cp = Checkpointer(tf.train.Checkpoint(v=tf.Variable(1.0)), tmp_path / "ckpt", uri, store)

    def put_file(u: str, path) -> None:  # noqa: ANN001
        if ".index" in u:
            raise OSError("simulated upload failure")

    monkeypatch.setattr(store, "put_file", put_file)
    with pytest.raises(OSError, match="simulated"):
        cp.save(1, {"epoch": 1})
    assert not store.exists(f"{uri}/latest.json")


def test_older_checkpoints_go_in_one_request(store, tmp_path: Path, monkeypatch) -> None:
    """Publishing a checkpoint removes the older one's files with one multi-object delete
    (it was one DELETE each); the new checkpoint and `latest.json` stay."""
    uri = store.uri(f"checkpoints/test-{uuid.uuid4().hex[:8]}")
    cp = Checkpointer(tf.train.Checkpoint(v=tf.Variable(1.0)), tmp_path / "ckpt", uri, store)
    cp.save(1, {"epoch": 1})
    single, multi = [], []
    real_one, real_many = store.client.remove_object, store.client.remove_objects
    monkeypatch.setattr(
        store.client, "remove_object", lambda *a, **k: single.append(a) or real_one(*a, **k)
    )
    monkeypatch.setattr(
        store.client, "remove_objects", lambda *a, **k: multi.append(a) or real_many(*a, **k)
    )
    cp.save(2, {"epoch": 2})
    assert single == [] and len(multi) == 1
    left = sorted(u[len(uri) + 1 :] for u in store.list(uri + "/"))
    assert left[-1] == "latest.json" and all(n.startswith("ckpt-2/") for n in left[:-1]), left
