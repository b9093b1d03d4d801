"""The pipeline tasks' MLflow round trips stay few: params, metrics and tags go in batches,
a run is read once per task (each request costs 40-100 ms on a loaded machine; a tiny run
made ~180 of them, most of its fixed overhead)."""

import time
import uuid

from components import evaluate, ingest, register, train
from zoo import names, tracking

EXPERIMENT = "genpipe-test-mlflow-calls"
#: Upper bounds per task of a tiny 2-epoch VAE run (a new registered name: no champion),
#: each task with its run status kept as its KFP function keeps it (tracking.run_status).
#: Measured: ingest 8 (4 of them at once), train 32 (17 artifact uploads of log_model, at
#: once), evaluate 9, register 15 (a first registration: the registered model and its lock
#: model are created). Before the batching: 22, 130, 32, 35; after it: 16, 97, 13, 20 (the
#: whole `zoo` package shipped with the model, a `mlflow.start_run` block around log_model,
#: two requests per run status check, params, tags and metrics in separate batches); then
#: 11, 44 (11 of them MLflow's copy of the run's metrics to the logged model: a history read
#: per metric), 9, 19 (a re-read of the registered model before each alias move).
#: Since then the counts stay and the waits shrink: register's and log_model's independent
#: requests go out together (round trips pinned in tests/zoo/test_registration.py and
#: tests/zoo/test_model_logging.py with tests/mlflow_rounds.py).
BOUNDS = {"ingest": 8, "train": 32, "evaluate": 10, "register": 15}


def test_a_tiny_run_makes_few_mlflow_calls_per_task(mlflow_requests, tmp_path):
    name = f"calls-{uuid.uuid4().hex[:8]}"
    counts: dict[str, int] = {}
    walls: dict[str, float] = {}

    def task(label: str, fn, *args, **kwargs):
        with mlflow_requests() as seen:
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

    def as_kfp(fn, *args, final: bool = False):
        """What the component's KFP function does around its run(): the run's status, and
        the run as read there handed on."""
        with tracking.run_status(run_id, final=final) as status:
            return fn(*args, mlflow_run=status.run)

    task("train", as_kfp, train.run, out["manifest_uri"], run_id, str(model_dir))
    ev = task("evaluate", as_kfp, evaluate.run, out["manifest_uri"], str(model_dir), run_id)
    better = ev["blessing"]["better_than_champion"]
    task("register", as_kfp, register.run, run_id, better, "", "p1", final=True)

    # Behaviour unchanged: what the tasks log is all on the run.
    run = tracking.client().get_run(run_id)
    assert run.data.params[names.PARAM_FINGERPRINT] == out["fingerprint"]
    assert run.data.params["epochs"] == "2" and run.data.params["model"] == "vae"
    assert {"train_loss", "train_wall_s", "test_neg_elbo", "blessed"} <= set(run.data.metrics)
    assert run.data.tags[names.TAG_REGISTERED_VERSION] == "1"
    assert run.data.tags[names.TAG_MODEL_URI].startswith("models:/")
    for label, bound in BOUNDS.items():
        assert counts[label] <= bound, (label, counts[label], bound, counts)
