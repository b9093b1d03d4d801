"""The pipeline tasks' MLflow round trips stay few: params, metrics and tags go in batches,
a run is read once per task (each request costs 40-100 ms on a loaded machine; a tiny run
made ~180 of them, most of its fixed overhead)."""

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from components import evaluate, ingest, register, train
from zoo import names, tracking
from zoo.settings import Settings

EXPERIMENT = "genpipe-test-mlflow-calls"
#: Upper bounds per task of a tiny 2-epoch VAE run (a new registered name: no champion).
#: Measured after batching: ingest 16, train 93-94 (of which ~50 are log_model's artifact
#: uploads and MLflow's own reads), evaluate 9, register 17; before: 22, 126, 28, 32.
BOUNDS = {"ingest": 17, "train": 98, "evaluate": 11, "register": 19}


@contextmanager
def counting(uri: str) -> Iterator[Counter]:
    """Count the HTTP requests this process sends to `uri` (every MLflow client call goes
    through requests.Session.request); the requests themselves go out unchanged."""
    seen: Counter = Counter()
    real = requests.Session.request

    def request(self, method, url, *args, **kwargs):
        if str(url).startswith(uri):
            seen[f"{method} {str(url)[len(uri) :].split('?')[0]}"] += 1
        return real(self, method, url, *args, **kwargs)

    requests.Session.request = request
    try:
        yield seen
    finally:
        requests.Session.request = real


def test_a_tiny_run_makes_few_mlflow_calls_per_task(stack, tmp_path):
    uri = Settings.from_env().mlflow_uri.rstrip("/")
    name = f"calls-{uuid.uuid4().hex[:8]}"
    counts: dict[str, int] = {}
    walls: dict[str, float] = {}

    def task(label: str, fn, *args, **kwargs):
        with counting(uri) as seen:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            walls[label] = time.perf_counter() - t0
        counts[label] = sum(seen.values())
        print(label, counts[label], f"{walls[label]:.1f}s", dict(seen.most_common(6)))
        return out

    out = task(
        "ingest",
        ingest.run,
        "digits",
        "vae",
        EXPERIMENT,
        uuid.uuid4().hex,
        preset="tiny",
        overrides='{"epochs": 2}',
        registered_name=name,
    )
    run_id = out["mlflow_run_id"]
    model_dir = tmp_path / "model"
    task("train", train.run, out["manifest_uri"], run_id, str(model_dir))
    ev = task("evaluate", evaluate.run, out["manifest_uri"], str(model_dir), run_id)
    task("register", register.run, run_id, ev["blessing"]["better_than_champion"], "", "p1")

    # Behaviour unchanged: what the tasks log is all on the run.
    run = tracking.client().get_run(run_id)
    assert run.data.params[names.PARAM_FINGERPRINT] == out["fingerprint"]
    assert run.data.params["epochs"] == "2" and run.data.params["model"] == "vae"
    assert {"train_loss", "train_wall_s", "test_neg_elbo", "blessed"} <= set(run.data.metrics)
    assert run.data.tags[names.TAG_REGISTERED_VERSION] == "1"
    assert run.data.tags[names.TAG_MODEL_URI].startswith("models:/")
    for label, bound in BOUNDS.items():
        assert counts[label] <= bound, (label, counts[label], bound, counts)
