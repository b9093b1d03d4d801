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
