"""The ingest component's plain run(): retried with the same pipeline run id it is idempotent
(same MLflow run, same content-addressed dataset, no duplicate params or inputs)."""

import uuid

from components.ingest import run
from zoo import names, tracking


def test_ingest_retry_is_idempotent(stack):
    pipeline_run = uuid.uuid4().hex
    first = run("digits", "vae", "genpipe-test-ingest", pipeline_run)
    again = run("digits", "vae", "genpipe-test-ingest", pipeline_run)
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    assert (
        again["manifest_uri"] == first["manifest_uri"]
        and again["fingerprint"] == first["fingerprint"]
    )
    c = tracking.client()
    exp = c.get_experiment_by_name("genpipe-test-ingest")
    runs = c.search_runs([exp.experiment_id], f"tags.`{names.TAG_PIPELINE_RUN}` = '{pipeline_run}'")
    assert len(runs) == 1
    r = runs[0]
    assert (
        r.data.params["dataset.train_count"] == "1617"
        and r.data.params["dataset.test_count"] == "180"
    )
    assert r.data.tags[names.TAG_FINGERPRINT] == first["fingerprint"]
    digests = [i.dataset.digest for i in r.inputs.dataset_inputs]
    assert len(digests) == 1 and first["fingerprint"].startswith(digests[0])


def test_ingest_rejects_text_for_an_image_model(stack, tmp_path):
    import pytest

    from zoo.errors import DataError

    text = tmp_path / "t.txt"
    text.write_text("hello world, some text\n" * 10)
    with pytest.raises(DataError, match="holds text data but model 'vae' trains on image data"):
        run(f"text:{text}", "vae", "genpipe-test-ingest", uuid.uuid4().hex)


def test_the_code_version_is_read_beside_the_data(stack, monkeypatch):
    """git's 2-3 processes (the commit and zoo.unchanged.code_version) run in a thread while
    the data loads and publishes (code_version ran after the publish, on the task's path);
    the run records the same commit and code version as before."""
    import threading

    from zoo import unchanged

    seen = []
    real = unchanged.code_version

    def code_version(commit=None):
        seen.append((threading.current_thread().name, commit, real(commit)))
        return seen[-1][2]

    monkeypatch.setattr(unchanged, "code_version", code_version)
    out = run("digits", "vae", "genpipe-test-ingest", uuid.uuid4().hex)
    [(thread, commit, code)] = seen
    assert thread != threading.main_thread().name
    tags = tracking.client().get_run(out["mlflow_run_id"]).data.tags
    assert (tags[names.TAG_GIT], tags[names.TAG_CODE]) == (commit, code)
    assert commit != "unknown" and code.startswith(commit)
