"""`genpipe run ... --resume RUN_ID`: a run killed mid-training is continued from its newest
checkpoint by a new run (same model, data and config), which says so in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from proc_helpers import descendants

from pipelines.local import check_run_args, run_local
from zoo import checkpoints, names, tracking
from zoo.errors import ConfigError, GenpipeError

LOOSE = '{"test_neg_elbo": {"max": 1000}}'
EPOCHS, STEPS = 40, 5


def _runs(experiment: str) -> list:
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_killed_run_resumes_from_its_checkpoint(stack, store, monkeypatch):
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")  # tasks are children of this process
    experiment = f"genpipe-test-resume-{uuid.uuid4().hex[:8]}"
    name = f"vae-resume-{uuid.uuid4().hex[:8]}"
    overrides = {"epochs": EPOCHS, "steps_per_epoch": STEPS}
    killed: list[int] = []

    def kill_train(kind: str, fields: dict) -> None:
        # After two epochs (two checkpoints published), as a user's Ctrl-C or a kill would.
        if kind == "progress" and fields.get("task") == "train" and int(fields["epoch"]) >= 2:
            if killed:
                return
            # The task's shell wrapper and its Python: a killed shell alone leaves Python
            # training to the end.
            for pid in descendants(os.getpid()):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"train" in cmdline and b"--function_to_execute" in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    with pytest.raises(GenpipeError, match="task train failed"):
        run_local(
            "vae",
            "digits",
            preset="tiny",
            overrides=overrides,
            experiment=experiment,
            registered_name=name,
            thresholds=LOOSE,
            start_stack=False,
            on_event=kill_train,
        )
    assert killed
    [old] = _runs(experiment)
    old_id = old.info.run_id
    point = checkpoints.resume_point(store, old_id)
    assert point is not None and point["step"] >= 2 * STEPS

    # Another config, other data or another model cannot resume it: one line says why.
    for kwargs, fragment in (
        (
            {"overrides": {**overrides, "epochs": EPOCHS + 1}},
            f"epochs={EPOCHS + 1} (run has {EPOCHS})",
        ),
        ({"source": "npz:/data/other-imgs.npz"}, "trained on --data digits"),
        ({"model": "dcgan"}, "trained 'vae', not 'dcgan'"),
        ({"resume": "0" * 32}, "no such MLflow run"),
    ):
        args = {"model": "vae", "preset": "tiny", "overrides": overrides, "thresholds": ""}
        args.update({"source": "digits", "resume": old_id, **kwargs})
        with pytest.raises(ConfigError) as e:
            check_run_args(**args)
        assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)

    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "genpipe", "run", "vae", "--preset", "tiny"]
    cmd += ["--set", f"epochs={EPOCHS}", "--set", f"steps_per_epoch={STEPS}"]
    cmd += ["--experiment", experiment, "--name", name, "--thresholds", LOOSE]
    out = subprocess.run(
        [*cmd, "--resume", old_id], capture_output=True, text=True, timeout=900, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming from step {point['step']} of run {old_id}" in out.stdout, out.stdout

    c = tracking.client()
    new = _runs(experiment)[-1]
    assert new.info.run_id != old_id and new.info.status == "FINISHED"
    assert new.data.tags[names.TAG_RESUMED_FROM] == f"{old_id} step {point['step']}"
    # It trained only the epochs the killed run had not finished.
    history = c.get_metric_history(new.info.run_id, "train_loss")
    done_epochs = point["step"] // STEPS
    assert sorted(m.step for m in history) == list(range(done_epochs + 1, EPOCHS + 1))
    assert new.data.params["epochs"] == str(EPOCHS)  # the new run has its own params
    old = c.get_run(old_id)
    assert old.data.tags[names.TAG_RESUMED_BY] == new.info.run_id
    # Ended: FAILED by the pipeline, or KILLED by the resume when its process died silently.
    assert old.info.status in ("KILLED", "FAILED")
    # Neither run's checkpoints are left: copied and dropped, then dropped after success.
    for run_id in (old_id, new.info.run_id):
        assert not list(store.list(checkpoints.prefix_uri(store, run_id) + "/"))

    again = subprocess.run(
        [*cmd, "--resume", old_id], capture_output=True, text=True, timeout=300, env=env
    )
    assert again.returncode == 1
    assert f"already resumed by run {new.info.run_id}" in again.stderr, again.stderr


def test_a_run_whose_evaluate_failed_resumes_without_training(stack, store, monkeypatch):
    """Training finished (the model is logged), evaluate failed (here: a bad
    GENPIPE_EVAL_SAMPLES, as a user's setting or an outage would): `--resume` evaluates and
    registers that model, training skipped with a line saying so. Before: "nothing to
    resume, its training completed"; the only way on was training again from scratch."""
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    experiment = f"genpipe-test-resume-eval-{uuid.uuid4().hex[:8]}"
    name = f"vae-resume-eval-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "genpipe", "run", "vae", "--preset", "tiny"]
    cmd += ["--set", "epochs=1", "--set", "steps_per_epoch=2"]
    cmd += ["--experiment", experiment, "--name", name, "--thresholds", LOOSE]
    env = {**os.environ, "COLUMNS": "400"}
    failed = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**env, "GENPIPE_EVAL_SAMPLES": "2"}
    )
    assert failed.returncode == 1 and "task evaluate failed" in failed.stderr, failed.stderr
    [old] = _runs(experiment)
    old_id = old.info.run_id
    assert old.info.status == "FAILED" and old.data.tags.get(names.TAG_MODEL_URI)
    model_uri = old.data.tags[names.TAG_MODEL_URI]
    assert f"`genpipe run ... --resume {old_id}` evaluates it" in failed.stderr, failed.stderr

    out = subprocess.run(
        [*cmd, "--resume", old_id], capture_output=True, text=True, timeout=900, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        f"training skipped: run {old_id} (FAILED) finished training; evaluating its model "
        f"{model_uri}" in out.stdout
    ), out.stdout
    assert f"registered:   {name} v1 aliases=candidate,champion" in out.stdout, out.stdout

    c = tracking.client()
    new = _runs(experiment)[-1]
    assert new.info.run_id != old_id and new.info.status == "FINISHED"
    assert new.data.tags[names.TAG_RESUMED_FROM] == f"{old_id} trained model"
    assert new.data.tags[names.TAG_MODEL_URI] == model_uri  # the same model, not a new one
    # Nothing trained: the train task said so and no epoch ran (its progress lines are in the
    # run's log); the trained run's figures carried over.
    log = max((stack.state_dir / "logs").glob("run-vae-*.log"), key=lambda p: p.stat().st_mtime)
    text = log.read_text(errors="replace")
    assert f"training skipped: run {old_id} finished training" in text
    assert "genpipe-progress" not in text
    assert new.data.metrics["train_wall_s"] == old.data.metrics["train_wall_s"]
    assert "test_neg_elbo" in new.data.metrics
    assert c.get_run(old_id).data.tags[names.TAG_RESUMED_BY] == new.info.run_id
    version = c.get_model_version(name, "1")
    assert version.run_id == new.info.run_id
    # Neither run resumes again: the old one was resumed, the new one finished (registering
    # its model twice is no resume).
    args = {"model": "vae", "preset": "tiny", "thresholds": "", "source": "digits"}
    args["overrides"] = {"epochs": 1, "steps_per_epoch": 2}
    for run_id, fragment in (
        (old_id, f"already resumed by run {new.info.run_id}"),
        (new.info.run_id, "nothing to resume, the run finished (FINISHED)"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            check_run_args(**args, resume=run_id)
