"""Evaluate's champion comparison: a champion evaluated on the very same held-out data, with
the same evaluation code and seed, is not re-scored (its recorded primary metric IS what
re-scoring gives, which this test re-scores to prove); on changed data it is re-scored.

Real tasks (ingest, train, evaluate, register) against the session's real stack.
"""

import contextlib
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from components import evaluate, ingest, register, train
from components.common import fetch_dataset
from zoo import models, names, registration, timeline, tracking
from zoo.evaluation import evaluate as evaluate_model
from zoo.evaluation import evaluation_key
from zoo.train import load_model

EXPERIMENT = "genpipe-test-evaluate-champion"
LOOSE = '{"test_neg_elbo": {"max": 1e9}}'
PRIMARY = models.get("vae").primary_metric
REUSED = "as its own evaluation recorded it"


def _pipeline(name: str, tmp: Path, test_fraction: float = 0.1, count=None) -> dict:
    """ingest -> train -> evaluate of a tiny VAE on digits (a few steps); `count`: the
    mlflow_requests fixture, to count evaluate's requests ("requests")."""
    out = ingest.run(
        "digits",
        "vae",
        EXPERIMENT,
        uuid.uuid4().hex,
        test_fraction=test_fraction,
        preset="tiny",
        overrides='{"steps_per_epoch": 3}',
        registered_name=name,
        force=True,
        thresholds=LOOSE,
    )
    run_id = out["mlflow_run_id"]
    model_dir = tmp / run_id
    train.run(out["manifest_uri"], run_id, str(model_dir))
    with count(short=True) if count else contextlib.nullcontext(Counter()) as seen:
        ev = evaluate.run(out["manifest_uri"], str(model_dir), run_id)
    return {**out, "run_id": run_id, "model_dir": model_dir, "eval": ev, "requests": seen}


def _rescore_champion(c, name: str, manifest_uri: str) -> float:
    """The champion downloaded from the registry and evaluated afresh on this data."""
    data = fetch_dataset(manifest_uri)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = registration.download_model_dir(c, name, "champion", Path(tmp) / "m")
        model, _ = load_model(model_dir)
    return evaluate_model(model, data, seed=0).metrics[PRIMARY]


@pytest.fixture(scope="module")
def fixed_code():
    """One code version for the module's runs, as an image has (GENPIPE_GIT_COMMIT): in a
    checkout being edited meanwhile, the version of each run would differ (and rightly
    make evaluate re-score)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENPIPE_GIT_COMMIT", f"test-{uuid.uuid4().hex[:8]}")
        yield


@pytest.fixture(scope="module")
def champion(stack, fixed_code, tmp_path_factory):
    """A registered name whose champion v1 was evaluated by this code."""
    name = f"evchamp-{uuid.uuid4().hex[:8]}"
    first = _pipeline(name, tmp_path_factory.mktemp("models"))
    assert first["eval"]["blessing"]["blessed"]
    register.run(first["run_id"], True, "", "p1")
    c = tracking.client()
    assert c.get_model_version_by_alias(name, "champion").version == "1"
    return name, first


def test_same_data_reuses_the_recorded_metric_which_equals_a_rescore(
    champion, tmp_path, mlflow_requests
):
    name, first = champion
    c = tracking.client()
    recorded_run = c.get_run(first["run_id"]).data
    recorded = recorded_run.metrics[PRIMARY]
    assert recorded_run.tags[names.TAG_EVAL_KEY]  # what the next run compares with

    second = _pipeline(name, tmp_path, count=mlflow_requests)
    # Not downloaded: the champion's alias and its run are read (2 requests) besides what
    # evaluate does without a champion (tests/components/test_mlflow_calls.py: <= 10).
    seen = second["requests"]
    print("evaluate's MLflow requests with a reused champion:", dict(seen))
    assert sum(seen.values()) <= 12
    assert {k for k in seen if k.startswith("GET")} == {"GET get", "GET alias"}  # no download
    b = second["eval"]["blessing"]
    assert b["champion_version"] == "1"
    assert b["champion_value"] == recorded  # exactly the champion run's own value
    assert any(REUSED in r for r in b["reasons"]), b["reasons"]
    assert c.get_run(second["run_id"]).data.metrics[f"champion_{PRIMARY}"] == recorded
    # The proof: re-scoring the registered champion on this data gives that very value.
    assert _rescore_champion(c, name, second["manifest_uri"]) == recorded
    # ... as does evaluate's own re-scoring path (no key: never reused).
    data = fetch_dataset(second["manifest_uri"])
    _, meta = load_model(second["model_dir"])
    cls = models.get("vae")
    value, version, note = evaluate._score_champion(
        c, name, second["run_id"], meta, data, cls, key=""
    )
    assert (value, version, note) == (recorded, "1", "")


def test_the_champion_is_read_while_the_model_loads(champion, tmp_path, monkeypatch):
    """The champion's alias and run are read in a thread beside the model load (they were
    read after the whole evaluation, two round trips on the task's critical path); the
    verdict is the same reuse of the recorded metric."""
    import requests

    name, first = champion
    marks = tmp_path / "marks.txt"
    monkeypatch.setenv(timeline.ENV, str(marks))
    started: list[tuple[float, str]] = []

    @contextlib.contextmanager
    def record(short: bool = True):
        real = requests.Session.request

        def request(self, method, url, *args, **kwargs):
            started.append((time.time(), f"{method} {str(url).split('?')[0].rsplit('/', 1)[-1]}"))
            return real(self, method, url, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "request", request)
        try:
            yield Counter()
        finally:
            monkeypatch.setattr(requests.Session, "request", real)

    second = _pipeline(name, tmp_path, count=record)
    loaded = [t for t, _, label in timeline.read(marks) if label == "evaluate: model loaded"]
    alias = [t for t, what in started if what == "GET alias"]
    assert len(loaded) == 1 and len(alias) == 1, (loaded, started)
    assert alias[0] < loaded[0]
    b = second["eval"]["blessing"]
    assert b["champion_version"] == "1" and any(REUSED in r for r in b["reasons"])


def test_changed_data_rescores_the_champion(champion, tmp_path):
    name, first = champion
    c = tracking.client()
    recorded = c.get_run(first["run_id"]).data.metrics[PRIMARY]

    other = _pipeline(name, tmp_path, test_fraction=0.2)  # another held-out split
    assert other["fingerprint"] != first["fingerprint"]
    b = other["eval"]["blessing"]
    assert b["champion_version"] == "1"
    assert not any(REUSED in r for r in b["reasons"]), b["reasons"]
    rescored = _rescore_champion(c, name, other["manifest_uri"])
    assert b["champion_value"] == rescored != recorded


def test_the_key_changes_with_everything_the_metrics_depend_on():
    base = ("vae", "fp", "test", 0, "abc123", {"samples": 1000, "feature_extractor": "s3://x"})
    key = evaluation_key(*base)
    assert len(key) == 64 and evaluation_key(*base) == key
    for i, other in enumerate(
        ["gan", "fp2", "val", 1, "abc124", {"samples": 999, "feature_extractor": "s3://x"}]
    ):
        changed = list(base)
        changed[i] = other
        assert evaluation_key(*changed) != key, changed
    # Unknown code, or an evaluation that cannot be reproduced: never equal to anything.
    assert evaluation_key(*base[:4], "unknown", base[5]) == ""
    assert evaluation_key(*base[:4], "", base[5]) == ""
    assert evaluation_key(*base[:5], None) == ""
