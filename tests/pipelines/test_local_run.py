"""The VAE pipeline end to end through kfp.local against the real embedded stack.

ingest -> train -> evaluate -> register on the offline digits data with a tiny config:
the first blessed run becomes champion; a worse run is not blessed and not promoted; a bad
source fails in ingest with a one-line error and registers nothing.
"""

import os
import signal
import uuid
from pathlib import Path

import pytest
from proc_helpers import descendants

from pipelines.local import run_local
from zoo import tracking
from zoo.errors import GenpipeError

LOOSE = '{"test_neg_elbo": {"max": 1000}}'  # tiny models are far from the production threshold


@pytest.fixture
def home(stack, monkeypatch):
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    return stack.state_dir


def test_vae_pipeline_registers_champion_and_keeps_it_against_worse_run(home):
    name = f"vae-e2e-{uuid.uuid4().hex[:8]}"
    events = []
    good = run_local(
        "vae",
        "digits",
        preset="tiny",
        overrides={"epochs": 2, "steps_per_epoch": 25},
        experiment="genpipe-test-e2e",
        registered_name=name,
        thresholds=LOOSE,
        start_stack=False,
        on_event=lambda kind, f: events.append((kind, f.get("task"))),
    )
    assert good.blessed and good.registered_version == "1"
    assert set(good.aliases) == {"candidate", "champion"}
    # Trained: far below the ~544 nats of an untrained tiny VAE.
    assert good.metrics["test_neg_elbo"] < 400
    assert {
        "evaluation/report.html",
        "evaluation/samples.png",
        "evaluation/interpolation.png",
    } <= set(good.artifacts)
    assert ("task_start", "register") in events and ("progress", "train") in events

    c = tracking.client()
    version = c.get_model_version_by_alias(name, "champion")
    assert version.run_id == good.mlflow_run_id
    assert version.tags["genpipe.dataset_fingerprint"] == good.tags["genpipe.dataset_fingerprint"]
    assert version.tags["genpipe.pipeline_run_id"] == good.tags["genpipe.pipeline_run_id"]
    assert "genpipe.git_commit" in version.tags
    run = c.get_run(good.mlflow_run_id)
    assert run.data.params["latent_dim"] == "4" and run.data.params["dataset.source"] == "digits"
    assert [i.dataset.digest for i in run.inputs.dataset_inputs]  # dataset logged as MLflow input

    worse = run_local(
        "vae",
        "digits",
        preset="tiny",
        overrides={"epochs": 1, "steps_per_epoch": 2, "learning_rate": 1e-6},
        experiment="genpipe-test-e2e",
        registered_name=name,
        thresholds=LOOSE,
        start_stack=False,
    )
    assert not worse.blessed and worse.registered_version is None
    assert worse.metrics["champion_test_neg_elbo"] == pytest.approx(
        good.metrics["test_neg_elbo"], rel=1e-3
    )
    assert c.get_model_version_by_alias(name, "champion").version == "1"
    assert len(c.search_model_versions(f"name='{name}'")) == 1
    # Both pipelines succeeded (one blessed, one not): their MLflow runs ended FINISHED.
    assert c.get_run(good.mlflow_run_id).info.status == "FINISHED"
    assert c.get_run(worse.mlflow_run_id).info.status == "FINISHED"
    # The exit task ran after both (and returned their run ids) but left them as they were.
    assert ("task_start", "finalize") in events
    assert "genpipe.failure" not in c.get_run(good.mlflow_run_id).data.tags
    _assert_no_credential_leaked(home, [good.mlflow_run_id, worse.mlflow_run_id])


def _assert_no_credential_leaked(home, run_ids):
    """Credentials reach components through the environment only, never their outputs."""
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    c = tracking.client()
    for run_id in run_ids:
        run = c.get_run(run_id)
        blob = repr(run.data.params) + repr(run.data.tags) + repr(run.data.metrics)
        assert secret not in blob, f"secret in MLflow run {run_id}"
    logs = list((home / "logs").glob("run-*.log"))
    assert logs
    for log in logs:
        assert secret not in log.read_text(errors="replace"), f"secret in {log}"


def test_bad_source_fails_in_ingest_with_one_line_error(home, tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    name = f"vae-bad-{uuid.uuid4().hex[:8]}"
    with pytest.raises(GenpipeError) as e:
        run_local("vae", f"idx:{tmp_path}", preset="tiny", registered_name=name, start_stack=False)
    msg = str(e.value)
    assert msg.startswith("task ingest failed:") and str(bad.name) in msg and "\n" not in msg
    assert not tracking.client().search_model_versions(f"name='{name}'")


def _only_run(experiment: str):
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return runs[0]


def test_exploding_gradients_stop_training_and_register_nothing(home):
    name = f"vae-div-{uuid.uuid4().hex[:8]}"
    experiment = f"genpipe-test-{name}"
    with pytest.raises(GenpipeError) as e:
        run_local(
            "vae",
            "digits",
            preset="tiny",
            overrides={"max_grad_norm": 1e-3},
            experiment=experiment,
            registered_name=name,
            thresholds=LOOSE,
            start_stack=False,
        )
    msg = str(e.value)
    assert (
        msg.startswith("task train failed:")
        and "training diverged" in msg
        and "max_grad_norm" in msg
    )
    # It diverged at its first step: there is no "last good checkpoint" to speak of.
    assert "no checkpoint had been written yet" in msg and "last good checkpoint" not in msg
    assert not tracking.client().search_model_versions(f"name='{name}'")
    run = _only_run(experiment)
    assert run.info.status == "FAILED"  # not FINISHED: the pipeline failed
    assert "max_grad_norm" in run.data.tags["genpipe.diverged"]


def test_killed_task_is_reported_by_its_signal(home, monkeypatch):
    """A task that dies without a word (here SIGKILL, as the OOM killer does) is reported by
    its cause, in plain text."""
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")  # tasks are children of this process
    name = f"vae-kill-{uuid.uuid4().hex[:8]}"
    killed: list[int] = []

    def kill_train(kind: str, fields: dict) -> None:
        if kind == "progress" and fields.get("task") == "train" and not killed:
            for pid in descendants(os.getpid()):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"train" in cmdline and b"--function_to_execute" in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    experiment = f"genpipe-test-{name}"
    with pytest.raises(GenpipeError) as e:
        run_local(
            "vae",
            "digits",
            preset="tiny",
            overrides={"epochs": 50, "steps_per_epoch": 5},
            experiment=experiment,
            registered_name=name,
            thresholds=LOOSE,
            start_stack=False,
            on_event=kill_train,
        )
    assert killed
    msg = str(e.value)
    assert msg.startswith("task train failed: killed by SIGKILL (out of memory?)"), msg
    assert "\x1b" not in msg and "\n" not in msg
    # The task could not mark its run (SIGKILL): the pipeline's exit task (finalize) did, as it
    # would on a cluster; the local runner marks nothing itself.
    run = _only_run(experiment)
    assert run.info.status == "FAILED"
    assert run.data.tags["genpipe.failure"]  # the pipeline's final error, set by finalize
