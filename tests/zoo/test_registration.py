"""Registration against the real MLflow server: versions, aliases, idempotency, pyfunc serving."""

import uuid
from typing import Any

import mlflow
import numpy as np
import pytest
from model_helpers import tiny_vae_dir

from zoo import registration, tracking
from zoo.errors import ConfigError, GenpipeError
from zoo.train import load_model


@pytest.fixture
def model_dir(tmp_path):
    return tiny_vae_dir(tmp_path)


def _logged_run(c, model_dir, experiment):
    run_id = tracking.get_or_create_run(c, experiment, uuid.uuid4().hex, "vae")
    registration.log_model(c, run_id, model_dir)
    return run_id


def test_get_or_create_run_is_idempotent(stack):
    c = tracking.client()
    pid = uuid.uuid4().hex
    first = tracking.get_or_create_run(c, "genpipe-test-idem", pid, "vae")
    assert tracking.get_or_create_run(c, "genpipe-test-idem", pid, "vae") == first
    assert tracking.get_or_create_run(c, "genpipe-test-idem", uuid.uuid4().hex, "vae") != first


def test_aliases_move_only_when_better_and_champion_unchanged(stack, model_dir):
    c = tracking.client()
    name = f"vae-reg-{uuid.uuid4().hex[:8]}"
    r1, r2, r3 = (_logged_run(c, model_dir, "genpipe-test-reg") for _ in range(3))

    first = registration.register(
        c, name, r1, better_than_champion=True, expected_champion="", tags={"k": "v"}
    )
    assert (first.version, first.promoted) == ("1", True)
    assert c.get_model_version_by_alias(name, "champion").version == "1"
    assert c.get_model_version(name, "1").tags["k"] == "v"

    worse = registration.register(
        c, name, r2, better_than_champion=False, expected_champion="1", tags={}
    )
    assert (worse.version, worse.promoted, worse.aliases) == ("2", False, ["candidate"])
    assert c.get_model_version_by_alias(name, "candidate").version == "2"
    assert c.get_model_version_by_alias(name, "champion").version == "1"

    # Evaluated against "no champion", but v1 became champion meanwhile: compare-and-set refuses.
    stale = registration.register(
        c, name, r3, better_than_champion=True, expected_champion="", tags={}
    )
    assert not stale.promoted and "champion moved" in stale.reason
    assert c.get_model_version_by_alias(name, "champion").version == "1"

    # A retried register task for the same run creates no second version.
    again = registration.register(
        c, name, r2, better_than_champion=False, expected_champion="1", tags={}
    )
    assert again.version == "2"
    assert len(c.search_model_versions(f"name='{name}'")) == 3
    # Stages are deprecated: nothing here may use them.
    assert all(v.current_stage in ("None", None) for v in c.search_model_versions(f"name='{name}'"))


def test_pyfunc_generates_from_request_and_bounds_it(stack, model_dir):
    c = tracking.client()
    name = f"vae-serve-{uuid.uuid4().hex[:8]}"
    run_id = _logged_run(c, model_dir, "genpipe-test-serve")
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = pyfunc.predict({"n": 4, "seed": 0})
    assert out.shape == (4, 28, 28, 1) and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, pyfunc.predict({"n": 4, "seed": 0}))
    with pytest.raises(ConfigError, match=r"n=100000 is out of range \[1, 256\]"):
        pyfunc.predict({"n": 100000, "seed": 0})


def test_download_model_dir_by_alias_and_version(stack, model_dir, tmp_path):
    c = tracking.client()
    name = f"vae-pull-{uuid.uuid4().hex[:8]}"
    run_id = _logged_run(c, model_dir, "genpipe-test-pull")
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})
    for ref in ("champion", "1"):
        dest = registration.download_model_dir(c, name, ref, tmp_path / ref)
        model, meta = load_model(dest)
        assert meta["model"] == "vae" and model.generate(2, seed=0).shape == (2, 28, 28, 1)
    with pytest.raises(GenpipeError, match="has no alias 'nope'"):
        registration.download_model_dir(c, name, "nope", tmp_path / "x")


def test_logged_model_belongs_to_its_run_which_keeps_running(stack, model_dir):
    """log_model creates the LoggedModel itself (no `mlflow.start_run` block: it cost 7 round
    trips and ended the run FINISHED mid-pipeline): in the run's experiment, with the run's
    params, READY, listed among the run's outputs, its MLmodel naming the run."""
    import yaml

    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-logged", uuid.uuid4().hex, "vae")
    tracking.RunLogger(c, run_id).params({"epochs": 2})
    uri = registration.log_model(c, run_id, model_dir)
    run = c.get_run(run_id)
    assert run.info.status == "RUNNING"
    model_id = uri.removeprefix("models:/")
    logged = c.get_logged_model(model_id)
    assert logged.experiment_id == run.info.experiment_id
    assert logged.source_run_id == run_id
    assert logged.params == {"epochs": "2"}
    assert str(logged.status) in ("READY", "LoggedModelStatus.READY"), logged.status
    assert model_id in [o.model_id for o in run.outputs.model_outputs]
    local = mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/MLmodel")
    with open(local) as f:
        assert yaml.safe_load(f)["run_id"] == run_id


def _over_a_champion(c, model_dir, prefix: str) -> tuple[str, str, Any]:
    """A registered model whose v1 is champion, and a second logged run (id, run) to promote."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r1, r2 = (_logged_run(c, model_dir, "genpipe-test-reg") for _ in range(2))
    registration.register(c, name, r1, better_than_champion=True, expected_champion="", tags={})
    return name, r2, c.get_run(r2)


def test_a_registration_over_a_champion_makes_few_requests(stack, model_dir, mlflow_requests):
    """A pipeline's usual registration (the model, its lock and a champion exist): 9 requests
    for a promotion. Before: 16 (the registered model read before the version search, the
    new version read back, the lock model re-created, each alias read on its own, and
    MlflowClient's re-read of the registered model before each alias move and ticket delete)."""
    c = tracking.client()
    name, r2, run = _over_a_champion(c, model_dir, "vae-few")
    tags = {"genpipe.fingerprint": "f" * 64}
    with mlflow_requests(short=True) as seen:
        res = registration.register(
            c, name, r2, better_than_champion=True, expected_champion="1", tags=tags, run=run
        )
    assert (res.version, res.promoted, res.aliases) == ("2", True, ["candidate", "champion"])
    assert sum(seen.values()) <= 9, seen
    assert c.get_model_version_by_alias(name, "champion").version == "2"
    assert c.get_model_version(name, "2").tags == tags


def test_a_registration_over_a_champion_waits_on_few_round_trips(stack, model_dir):
    """Independent requests go out together: the version is found and created while the
    lock's ticket is taken and the turn checked, both aliases move at once, and what the
    caller records (`record`) goes out with the ticket's release: 5 round trips for 10
    requests (before: 9 for 9, then the caller's tags after them)."""
    from mlflow_rounds import mlflow_rounds

    c = tracking.client()
    name, r2, run = _over_a_champion(c, model_dir, "vae-rounds")
    tags = {"genpipe.fingerprint": "f" * 64}
    recorded = []

    def record(result):
        c.set_tag(r2, "genpipe.test_recorded", result.version)
        recorded.append(result)

    with mlflow_rounds() as rounds:
        res = registration.register(
            c,
            name,
            r2,
            better_than_champion=True,
            expected_champion="1",
            tags=tags,
            run=run,
            record=record,
        )
    assert (res.version, res.promoted, res.aliases) == ("2", True, ["candidate", "champion"])
    assert recorded == [res]
    assert (rounds.count, rounds.depth) == (10, 5), rounds.chain()
    assert c.get_run(r2).data.tags["genpipe.test_recorded"] == "2"
    assert c.get_model_version_by_alias(name, "champion").version == "2"
    assert c.get_model_version_by_alias(name, "candidate").version == "2"
    assert c.get_model_version(name, "2").tags == tags
    assert not c.search_model_versions(f"name='{name}{registration.LOCK_SUFFIX}'")  # released


def test_primed_registry_store_scans_no_entry_points(monkeypatch):
    """registration.prime() (the warm zygote) builds MLflow's model-registry store registry;
    a task's first registry call then scans no distribution's entry points (it did, on the
    critical path of register's first request)."""
    import importlib.metadata

    from mlflow import MlflowClient
    from mlflow.tracking._model_registry import utils as registry_utils

    monkeypatch.setattr(registry_utils, "_model_registry_store_registry", None)
    registration.prime()
    scans = []
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **k: scans.append(k) or real(**k)
    )
    assert MlflowClient("http://127.0.0.1:1")._get_registry_client().store is not None
    assert scans == []
