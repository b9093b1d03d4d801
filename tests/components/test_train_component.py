"""A run is checked once, at ingest, before anything is fetched, trained or written; train,
evaluate and register read what ingest recorded on the MLflow run instead of re-parsing."""

import uuid

import pytest

from components import ingest, train
from components.common import recorded_run
from zoo import config, models, names, tracking
from zoo.errors import ConfigError, GenpipeError

EXPERIMENT = "genpipe-test-train-component"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"platform_overrides": "[1]"}, "platform_overrides '[1]' is not a JSON object"),
        ({"overrides": "{bad"}, "overrides '{bad' is not a JSON object"),
        ({"platform_overrides": '{"precision": "half"}'}, "precision='half' is not one of"),
        # A bad run's overrides win over (good) profile defaults, so they are what is checked.
        (
            {
                "overrides": '{"steps_per_call": 0}',
                "platform_overrides": '{"precision": "mixed_float16", "steps_per_call": 10}',
            },
            "steps_per_call=0 must be >= 1",
        ),
        # Checked at ingest now, not only after training, by evaluate and register:
        ({"thresholds": '{"test_nope": {"max": 1}}'}, "thresholds: model 'vae' reports no"),
        ({"registered_name": "a/b"}, "registered_name 'a/b' is not a valid registered model"),
        ({"preset": "huge"}, "preset 'huge' is not one of default, tiny"),
        ({"test_fraction": 1.5}, "test_fraction"),
        # Before, a negative tolerance of a run submitted straight to KFP failed at evaluate.
        ({"champion_tolerance": -0.1}, "champion_tolerance=-0.1 must be a number >= 0"),
    ],
)
def test_a_bad_run_fails_at_ingest_naming_the_parameter(kwargs, message):
    # No stack here: nothing may be fetched, written or logged before the checks.
    with pytest.raises(ConfigError) as e:
        ingest.run("digits", "vae", EXPERIMENT, uuid.uuid4().hex, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_model_fails_at_ingest():
    with pytest.raises(ConfigError, match="unknown model 'nope'; registered models: "):
        ingest.run("digits", "nope", EXPERIMENT, uuid.uuid4().hex)


def test_later_tasks_read_the_run_ingest_checked(stack):
    out = ingest.run(
        "digits",
        "vae",
        EXPERIMENT,
        uuid.uuid4().hex,
        preset="tiny",
        overrides='{"epochs": 3}',
        platform_overrides='{"precision": "float32", "epochs": 9}',
        thresholds='{"test_neg_elbo": {"max": 300}}',
        champion_tolerance=0.02,
    )
    rec = recorded_run(tracking.client(), out["mlflow_run_id"])
    assert rec.model == "vae" and rec.preset == "tiny"
    assert rec.overrides == {"precision": "float32", "epochs": 3}  # the run's own win
    assert rec.config == models.resolve_config("vae", "tiny", rec.overrides)
    assert config.to_dict(rec.config)["epochs"] == 3
    assert rec.thresholds["test_neg_elbo"] == ("max", 300.0)
    assert rec.registered_name == "vae-digits"  # MODEL-DATASET, resolved once
    assert rec.champion_tolerance == 0.02  # evaluate's blessing reads it here


def test_train_refuses_a_run_ingest_did_not_record(stack, tmp_path):
    c = tracking.client()
    exp = c.get_experiment_by_name(EXPERIMENT) or c.get_experiment(c.create_experiment(EXPERIMENT))
    run_id = c.create_run(exp.experiment_id, tags={names.TAG_MODEL: "vae"}).info.run_id
    out = tmp_path / "model"
    with pytest.raises(GenpipeError, match=f"MLflow run {run_id} has no tag genpipe.run_request"):
        train.run("s3://nowhere/manifest.json", run_id, str(out))
    assert not out.exists()
