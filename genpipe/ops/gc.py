"""`genpipe gc`: find (and remove) what interrupted runs left behind.

* checkpoints in the object store of runs that ended (FINISHED, FAILED, KILLED) or are gone
  from MLflow: a run that is still RUNNING keeps its checkpoints (it may be training, or be
  resumed with `genpipe run --resume RUN`); a FAILED or KILLED run's checkpoint is listed as
  resumable, because deleting it is the user's call;
* temporary directories of pipeline tasks (`genpipe-task-PID-*`, `genpipe-train-PID-*` in the
  temp dir) whose process is gone: a task removes its own when it ends, but a killed one
  (SIGKILL, the OOM killer) cannot. Directories of older versions carry no pid: they count as
  left behind when nothing in them changed for `stale_s` seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genpipe.ops import procs
from zoo import checkpoints
from zoo.storage import ObjectStore

#: the temporary directories pipeline tasks create (pipelines.warm, components.train)
TEMP_DIR = re.compile(r"^genpipe-(?:task|train)-(?:(?P<pid>\d+)-)?[\w]+$")
#: run states whose checkpoints nothing will use again (MLflow RunStatus names)
ENDED = ("FINISHED", "FAILED", "KILLED")


@dataclass
class Leftover:
    """One thing left behind: a run's checkpoints (an s3:// prefix) or a temp directory."""

    kind: str  # "checkpoints" | "tempdir"
    where: str
    size: int
    why: str


@dataclass
class Survey:
    leftovers: list[Leftover]
    #: checkpoints kept because their run is unfinished: (run id, bytes)
    kept: list[tuple[str, int]]


def survey(
    store: ObjectStore,
    client: Any,
    temp_root: Path | None = None,
    stale_s: float = 3600.0,
) -> Survey:
    """What `genpipe gc` would remove, and which checkpoints it keeps."""
    leftovers: list[Leftover] = []
    kept: list[tuple[str, int]] = []
    for run_id, size in _checkpoint_sizes(store).items():
        why = _ended(client, run_id)
        if why is None:
            kept.append((run_id, size))
        else:
            uri = checkpoints.prefix_uri(store, run_id) + "/"
            leftovers.append(Leftover("checkpoints", uri, size, why))
    leftovers += temp_leftovers(temp_root or Path(tempfile.gettempdir()), stale_s)
    return Survey(leftovers, kept)


def _checkpoint_sizes(store: ObjectStore) -> dict[str, int]:
    """Bytes under `checkpoints/<run id>/`, per run id."""
    base = store.uri("checkpoints/")
    sizes: dict[str, int] = {}
    for uri, size in store.list_sizes(base):
        run_id = uri[len(base) :].split("/", 1)[0]
        sizes[run_id] = sizes.get(run_id, 0) + size
    return sizes


def _ended(client: Any, run_id: str) -> str | None:
    """Why a run's checkpoints are left behind ('run FAILED ...'), or None while it runs."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return "run gone from MLflow"
        raise
    if run.info.lifecycle_stage == "deleted":
        return "run deleted in MLflow"
    status = run.info.status
    if status not in ENDED:
        return None
    if status in ("FAILED", "KILLED"):
        return f"run {status}; resumable with `genpipe run ... --resume {run_id}`"
    return f"run {status}"


def temp_leftovers(root: Path, stale_s: float = 3600.0) -> list[Leftover]:
    """This user's task temp dirs under `root` whose process is gone (or, without a pid in
    the name, in which nothing changed for `stale_s` seconds)."""
    out = []
    now = time.time()
    uid = os.getuid()
    for path in sorted(root.glob("genpipe-*")):
        m = TEMP_DIR.match(path.name)
        try:
            if not m or not path.is_dir() or path.is_symlink() or path.stat().st_uid != uid:
                continue
        except OSError:
            continue
        size, newest = _du(path)
        if m["pid"]:
            pid = int(m["pid"])
            if procs.alive(pid):
                continue
            why = f"process {pid} is gone"
        else:
            if now - newest < stale_s:
                continue
            why = f"unchanged for {(now - newest) / 3600:.1f} h"
        out.append(Leftover("tempdir", str(path), size, why))
    return out


def _du(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of everything under `path`, symlinks not followed."""
    size, newest = 0, path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            if name in files:
                size += st.st_size
    return size, newest


def remove(store: ObjectStore, leftovers: Iterable[Leftover]) -> int:
    """Delete the given leftovers; returns the bytes freed."""
    freed = 0
    for item in leftovers:
        if item.kind == "checkpoints":
            store.delete_prefix(item.where)
        else:
            shutil.rmtree(item.where, ignore_errors=True)
        freed += item.size
    return freed


def human(n: float) -> str:
    """Bytes in words: 1.5 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
