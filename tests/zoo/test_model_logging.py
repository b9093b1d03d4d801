"""zoo.model_logging against the real MLflow server: the model it logs is the one MLflow's own
Model.log (what mlflow.pyfunc.log_model calls) logs, in fewer requests."""

import uuid

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.models import Model
from model_helpers import SPEC, tiny_vae_dir

from zoo import model_logging, tracking
from zoo.serving import GenerativePyfunc, input_example, model_signature

#: MLmodel fields that name this very model or the moment it was saved
PER_MODEL = {"model_uuid", "model_id", "artifact_path", "utc_time_created", "run_id"}


@pytest.fixture
def model_dir(tmp_path):
    return tiny_vae_dir(tmp_path)


def _run(c):
    """A run as the train task leaves it: params, totals at step 0, per-epoch values at 1, 2."""
    run_id = tracking.get_or_create_run(c, "genpipe-test-model-logging", uuid.uuid4().hex, "vae")
    logger = tracking.RunLogger(c, run_id)
    logger.log(params={"epochs": 2}, metrics={"train_wall_s": 1.5, "train_samples_per_s": 9.0})
    for epoch in (1, 2):
        logger.metrics({"train_loss": 10.0 / epoch, "train_kl": 1.0}, step=epoch)
    return run_id


def _mlflow_log(c, run_id, model_dir, tmp_path):
    """What log_model did before: MLflow's own Model.log, with the same arguments."""
    from zoo.shipping import stage_serving_code

    logged = mlflow.initialize_logged_model(
        name="model",
        source_run_id=run_id,
        experiment_id=c.get_run(run_id).info.experiment_id,
        params=dict(c.get_run(run_id).data.params),
    )
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=logged.model_id,
        python_model=GenerativePyfunc(),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(stage_serving_code("vae", tmp_path / "code"))],
        pip_requirements=model_logging.model_requirements(),
        signature=model_signature("vae", SPEC),
        input_example=input_example("vae"),
    )
    return info.model_uri


def _files(c, model_id):
    """{relative path: bytes} of every artifact of a LoggedModel."""
    import tempfile
    from pathlib import Path

    location = c.get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp))
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _mlmodel(files):
    return {k: v for k, v in yaml.safe_load(files["MLmodel"]).items() if k not in PER_MODEL}


def test_logs_what_mlflow_logs(stack, model_dir, tmp_path):
    """Same files (byte for byte, but MLmodel's ids and time), same LoggedModel state: READY,
    the run's params, its step-0 metrics (not the per-epoch ones), among the run's outputs."""
    c = tracking.client()
    ours_run, theirs_run = _run(c), _run(c)
    ours = model_logging.log_model(c, ours_run, model_dir).removeprefix("models:/")
    theirs = _mlflow_log(c, theirs_run, model_dir, tmp_path).removeprefix("models:/")

    ours_files, theirs_files = _files(c, ours), _files(c, theirs)
    assert sorted(ours_files) == sorted(theirs_files)
    assert len(ours_files) >= 15  # the pyfunc files, the Keras model, our shipped code
    for name in ours_files:
        if name not in ("MLmodel", "python_model.pkl"):  # the pickle is equal in content
            assert ours_files[name] == theirs_files[name], name
    assert _mlmodel(ours_files) == _mlmodel(theirs_files)
    # the ids in MLmodel are what Model.log writes: the run, the LoggedModel, its location
    for model_id, run_id, files in (
        (ours, ours_run, ours_files),
        (theirs, theirs_run, theirs_files),
    ):
        mlmodel = yaml.safe_load(files["MLmodel"])
        assert mlmodel["run_id"] == run_id
        assert mlmodel["model_id"] == mlmodel["model_uuid"] == model_id
        assert mlmodel["artifact_path"] == c.get_logged_model(model_id).artifact_location

    for model_id, run_id in ((ours, ours_run), (theirs, theirs_run)):
        logged = c.get_logged_model(model_id)
        assert str(logged.status).endswith("READY")
        assert logged.params == {"epochs": "2"} and logged.source_run_id == run_id
        assert {(m.key, m.value, m.step) for m in logged.metrics} == {
            ("train_wall_s", 1.5, 0),
            ("train_samples_per_s", 9.0, 0),
        }
        run = c.get_run(run_id)
        assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
        assert run.info.status == "RUNNING"
    assert c.get_run(ours_run).data.tags["genpipe.model_uri"] == f"models:/{ours}"

    # and it serves: load as a server does, generate from the input example
    pyfunc = mlflow.pyfunc.load_model(f"models:/{ours}")
    assert np.asarray(pyfunc.predict(input_example("vae"))).shape == (1, 28, 28, 1)


def test_few_requests_and_no_metric_history_reads(stack, model_dir, mlflow_requests):
    """One request per file (uploaded concurrently) plus six: the run, the LoggedModel's
    creation, the run's output, its metrics, READY, the run's tag. Model.log made 36 for a
    run with nine metrics: it read every metric's history, the run and the model twice."""
    c = tracking.client()
    run_id = _run(c)
    for k in range(6):
        tracking.RunLogger(c, run_id).metrics({f"train_extra_{k}": 1.0}, step=1)
    with mlflow_requests(short=True) as seen:
        model_logging.log_model(c, run_id, model_dir)
    uploads = sum(n for k, n in seen.items() if k.startswith("PUT "))
    assert uploads >= 15
    assert sum(seen.values()) - uploads <= 6, seen
    assert not any("get-history" in k for k in seen), seen


def test_a_failed_log_marks_the_model_failed(stack, model_dir):
    """As Model.log: a LoggedModel that failed to log is FAILED, not left PENDING, and the run
    gets no genpipe.model_uri."""
    import json

    c = tracking.client()
    run_id = _run(c)
    meta = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**meta, "model": "no-such-model"}))
    with pytest.raises(Exception, match="no-such-model"):
        model_logging.log_model(c, run_id, model_dir)
    (model_id,) = [m.model_id for m in c.get_run(run_id).outputs.model_outputs]
    assert str(c.get_logged_model(model_id).status).endswith("FAILED")
    assert "genpipe.model_uri" not in c.get_run(run_id).data.tags


def test_env_vars_the_check_found_are_recorded_in_the_uploaded_mlmodel(stack, model_dir):
    """As Model.log: environment variables (MLflow's allowlist) that predicting the example
    read are listed in MLmodel and in environment_variables.txt; the rewritten MLmodel is the
    one stored, although the first one was already on its way."""
    from concurrent.futures import ThreadPoolExecutor

    c = tracking.client()
    run_id = _run(c)
    logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id)
    saved, local = model_logging._save(
        model_dir.parent / "saved", {"model": "vae", "data_spec": SPEC}, model_dir
    )
    model_logging._stamp(saved, local, run_id, logged)
    with ThreadPoolExecutor(4) as pool:
        model_logging._upload(
            pool, local, logged.artifact_location, during=lambda: ["OPENAI_API_KEY"]
        )
    files = _files(c, logged.model_id)
    assert yaml.safe_load(files["MLmodel"])["env_vars"] == ["OPENAI_API_KEY"]
    assert b"OPENAI_API_KEY" in files["environment_variables.txt"]


def test_the_check_runs_while_the_run_is_read_and_the_model_created(stack, model_dir, monkeypatch):
    """The input-example check (load the saved model, predict; ~0.3 s) does not wait for the
    run's read and the LoggedModel's creation, and the model's status and the run's tag go
    out together: each request here is held 0.3 s (tests/mlflow_rounds.py)."""
    import time

    from mlflow_rounds import mlflow_rounds

    c = tracking.client()
    run_id = _run(c)
    started = []
    real_check = model_logging._check_example

    def check(local):
        started.append(time.monotonic())
        return real_check(local)

    monkeypatch.setattr(model_logging, "_check_example", check)
    with mlflow_rounds() as rounds:
        uri = model_logging.log_model(c, run_id, model_dir)
    (created_end,) = [end for _, end, name in rounds.spans if name == "POST logged-models"]
    assert started and started[0] < created_end, rounds.chain()
    (ready,) = [s for s in rounds.spans if s[2].startswith("PATCH ")]
    (tagged,) = [s for s in rounds.spans if s[2] == "POST set-tag"]
    assert ready[0] < tagged[1] and tagged[0] < ready[1], rounds.chain()  # they overlap
    assert c.get_run(run_id).data.tags["genpipe.model_uri"] == uri
    assert str(c.get_logged_model(uri.removeprefix("models:/")).status).endswith("READY")


def test_primed_requirements_are_looked_up_once_per_process(monkeypatch):
    """prime() (the warm zygote) looks the installed versions up; a task's log_model then reads
    no package metadata (it read 9 distributions per training task). Same list, a fresh copy."""
    model_logging.prime()
    first = model_logging.model_requirements()
    looked = []
    monkeypatch.setattr(model_logging.md, "version", lambda d: looked.append(d) or "0")
    again = model_logging.model_requirements()
    assert again == first and again is not first and looked == []
    assert first[0].startswith("tensorflow-cpu==") and any(r.startswith("keras==") for r in first)


def test_prime_runs_no_tensorflow_op():
    """registration.prime() (with model_logging.prime()) runs in the warm server's zygote, which must not start TensorFlow's runtime
        before it forks (pipelines/warm_preload.py checks), nor leave a thread running (a fork keeps
    only the forking thread, and any lock another one held): a fresh interpreter shows neither."""
    import subprocess
    import sys

    code = (
        "import threading, zoo.serving, zoo.registration as m\n"
        "m.prime()\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "from tensorflow.python.eager import context\n"
        "started = context.context_safe() is not None and context.context()._context_handle is not None\n"
        "print('started' if started else 'not started')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("not started")
