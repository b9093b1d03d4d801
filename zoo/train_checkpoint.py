"""The trainer's checkpoints: local tf.train checkpoints mirrored to an object-store prefix and
published by a `latest.json` pointer written last (zoo.checkpoints: naming, what is kept)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tensorflow as tf

from zoo import checkpoints as ckpts
from zoo.storage import ObjectStore
from zoo.tfconfig import cluster_info


def _is_chief() -> bool:
    return cluster_info().is_chief


class Checkpointer:
    """Local tf.train checkpoints mirrored to an object-store prefix, published by `latest.json`."""

    def __init__(
        self, ckpt: tf.train.Checkpoint, local_dir: Path, uri: str | None, store: ObjectStore | None
    ):
        self.ckpt = ckpt
        self.local_dir = local_dir
        self.uri = uri.rstrip("/") if uri else None
        self.store = store
        self.manager = tf.train.CheckpointManager(ckpt, str(local_dir), max_to_keep=2)

    def save(self, step: int, info: dict[str, Any]) -> str:
        path = self.manager.save(checkpoint_number=step)
        # Every multi-worker process saves (the strategy needs all of them), but only the
        # chief publishes: concurrent writers of one prefix could mix files of two workers.
        if self.uri and self.store and _is_chief():
            name = Path(path).name
            files = sorted(p for p in Path(path).parent.glob(f"{name}.*"))
            # The files at once (index and data shards: independent objects), each retried on
            # its own by the store; any failure raises here, before the pointer is written.
            with ThreadPoolExecutor(max(1, min(len(files), 8))) as pool:
                for done in [
                    pool.submit(self.store.put_file, f"{self.uri}/{name}/{f.name}", f)
                    for f in files
                ]:
                    done.result()
            # Pointer last: a reader never sees a checkpoint whose files are not all there.
            self.store.put_json(
                f"{self.uri}/latest.json",
                {"prefix": name, "files": [f.name for f in files], "step": step, **info},
            )
            # Then the older ones go: a resume needs only the newest complete checkpoint.
            ckpts.prune(self.store, self.uri, keep=name)
        return path

    def restore_latest(self) -> dict[str, Any] | None:
        """Restore the newest published checkpoint; None when there is none."""
        if not (self.uri and self.store) or not self.store.exists(f"{self.uri}/latest.json"):
            return None
        latest = self.store.get_json(f"{self.uri}/latest.json")
        dest = self.local_dir / "restore"
        shutil.rmtree(dest, ignore_errors=True)
        for f in latest["files"]:
            self.store.get_file(f"{self.uri}/{latest['prefix']}/{f}", dest / f)
        self.ckpt.restore(str(dest / latest["prefix"])).assert_existing_objects_matched()
        return latest
