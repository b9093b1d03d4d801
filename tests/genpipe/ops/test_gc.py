"""Nothing left behind: checkpoints pruned in the bucket as new ones land and dropped after a
successful run, `genpipe gc` for what interrupted runs leave (dry run by default), task temp
dirs removed when the task ends, the run log written line by line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

from genpipe.ops import gc
from pipelines import warm
from pipelines.local import run_local
from zoo import checkpoints, tracking
from zoo.data import fetch, load_source, publish, split
from zoo.models import resolve_config
from zoo.train import Trainer

LOOSE = '{"test_neg_elbo": {"max": 1000}}'


def _folders(store, uri: str) -> set[str]:
    """The checkpoint folders (and files) directly under a run's checkpoint prefix."""
    base = uri.rstrip("/") + "/"
    return {o[len(base) :].split("/", 1)[0] for o in store.list(base)}


def test_bucket_keeps_only_the_newest_checkpoint(stack, store, tmp_path):
    manifest = publish(split(load_source("digits")), store, source="digits")
    data = fetch(manifest["uri"], store, tmp_path / "cache")
    ckpt = store.uri(f"checkpoints/prune-{uuid.uuid4().hex[:8]}")
    cfg = resolve_config(
        "vae",
        "tiny",
        {
            "epochs": 3,
            "steps_per_epoch": 6,
            "checkpoint_every_steps": 2,
            "checkpoint_every_seconds": 0,
        },
    )
    seen: list[set[str]] = []
    Trainer(
        "vae", cfg, data, tmp_path / "w1", checkpoint_uri=ckpt, store=store,
        on_step=lambda step: seen.append(_folders(store, ckpt)),
    ).run()  # fmt: skip
    # 9 checkpoints were published (every 2 steps of 18); the bucket never held more than one.
    assert seen and all(len(f - {"latest.json"}) <= 1 for f in seen), seen
    assert _folders(store, ckpt) == {"latest.json", "ckpt-18"}
    assert store.get_json(f"{ckpt}/latest.json")["prefix"] == "ckpt-18"
    # What is kept is what a resume needs: a longer run of the same checkpoint resumes there.
    longer = resolve_config("vae", "tiny", {"epochs": 4, "steps_per_epoch": 6})
    res = Trainer("vae", longer, data, tmp_path / "w2", checkpoint_uri=ckpt, store=store).run()
    assert res.resumed_from_step == 18 and res.steps == 24


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _put_checkpoint(store, run_id: str, size: int = 3000) -> str:
    uri = checkpoints.prefix_uri(store, run_id)
    store.put_bytes(f"{uri}/ckpt-4/ckpt-4.index", b"i" * size)
    store.put_json(f"{uri}/latest.json", {"prefix": "ckpt-4", "files": ["ckpt-4.index"], "step": 4})
    return uri


def _genpipe(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENPIPE_HOME": str(stack.state_dir), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "genpipe", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_gc_lists_then_deletes_what_ended_runs_left(stack, store, tmp_path):
    c = tracking.client()
    exp = c.create_experiment(f"genpipe-test-gc-{uuid.uuid4().hex[:8]}")
    runs = {}
    for status in ("FAILED", "KILLED", "FINISHED", "RUNNING"):
        runs[status] = c.create_run(exp).info.run_id
        if status != "RUNNING":
            c.set_terminated(runs[status], status)
    runs["gone"] = uuid.uuid4().hex  # a run id MLflow never had
    uris = {k: _put_checkpoint(store, run_id) for k, run_id in runs.items()}

    temp = tmp_path / "tmp"
    temp.mkdir()
    dead = temp / f"genpipe-train-{_dead_pid()}-k1ll3d00"
    alive = temp / f"genpipe-task-{os.getpid()}-runn1ng0"
    legacy_old = temp / "genpipe-train-0ld0ld00"
    legacy_new = temp / "genpipe-task-n3wn3w00"
    other = temp / "genpipe-cache"  # not a task temp dir: never touched
    for d in (dead, alive, legacy_old, legacy_new, other):
        d.mkdir()
        (d / "f.bin").write_bytes(b"x" * 5000)
    two_hours_ago = time.time() - 7200
    for p in (legacy_old / "f.bin", legacy_old):
        os.utime(p, (two_hours_ago, two_hours_ago))

    dry = _genpipe(stack, "gc", "--temp-dir", str(temp)).stdout
    for key in ("FAILED", "KILLED", "FINISHED", "gone"):
        assert f"{uris[key]}/" in dry, (key, dry)
    assert f"--resume {runs['FAILED']}" in dry and "run gone from MLflow" in dry
    assert uris["RUNNING"] not in dry  # an unfinished run's checkpoints are kept
    assert re.search(r"kept: checkpoints of \d+ unfinished run\(s\)", dry)
    assert str(dead) in dry and "process" in dry and str(legacy_old) in dry
    assert str(alive) not in dry and str(legacy_new) not in dry and str(other) not in dry
    assert "dry run" in dry
    # A dry run deletes nothing.
    assert all(store.exists(f"{u}/latest.json") for u in uris.values())
    assert dead.exists() and legacy_old.exists()

    done = _genpipe(stack, "gc", "--yes", "--temp-dir", str(temp)).stdout
    assert "deleted" in done and "freed" in done
    for key in ("FAILED", "KILLED", "FINISHED", "gone"):
        assert not list(store.list(uris[key] + "/")), key
    assert store.exists(f"{uris['RUNNING']}/latest.json")  # an unfinished run keeps its own
    assert not dead.exists() and not legacy_old.exists()
    assert alive.exists() and legacy_new.exists() and other.exists()
    store.delete_prefix(uris["RUNNING"] + "/")


def test_successful_run_leaves_nothing_behind(stack, store, monkeypatch, tmp_path):
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    # The tasks' temp dir is this test's own (other runs on this machine use /tmp too): the
    # warm server restarts with it (its task processes are forks of that server).
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    warm.stop_server(stack.state_dir)
    logs_before = set((stack.state_dir / "logs").glob("run-*.log"))
    on_disk: list[tuple[str, bool]] = []

    def on_event(kind: str, fields: dict) -> None:
        if kind == "task_start":  # the line that announced the task is in the file already
            logs = set((stack.state_dir / "logs").glob("run-*.log")) - logs_before
            text = "".join(p.read_text(errors="replace") for p in logs)
            on_disk.append((fields["task"], f"'{fields['task']}'" in text))

    name = f"vae-gc-{uuid.uuid4().hex[:8]}"
    try:
        res = run_local(
            "vae",
            "digits",
            preset="tiny",
            overrides={"epochs": 2, "steps_per_epoch": 5, "checkpoint_every_steps": 2},
            experiment="genpipe-test-gc",
            registered_name=name,
            thresholds=LOOSE,
            start_stack=False,
            on_event=on_event,
        )
    finally:
        warm.stop_server(stack.state_dir)  # later tests get a server with the usual TMPDIR
    assert res.blessed
    assert [t for t, _ in on_disk] == ["ingest", "train", "evaluate", "register", "finalize"], (
        on_disk
    )
    problems = []  # all three checked, so a failure names every one that fails
    # Checkpoints were written (every 2 steps, each epoch) and are gone now the model is logged.
    left = list(store.list(checkpoints.prefix_uri(store, res.mlflow_run_id) + "/"))
    if left:
        problems.append(f"{len(left)} checkpoint objects left in the bucket")
    # Every task's temp dir went with its task.
    leaked = [p.name for p in temp.iterdir() if gc.TEMP_DIR.match(p.name)]
    if leaked:
        problems.append(f"task temp dirs left: {leaked}")
    # logs/run-*.log is written line by line, not in 8 kB blocks: the line that announced a
    # task is on disk when the task starts.
    late = [task for task, ok in on_disk if not ok]
    if late:
        problems.append(f"log lines not on disk yet when tasks started: {late}")
    assert not problems, problems
