"""The registered name defaults to MODEL-DATASET: a run on another dataset (KMNIST after
digits) gets its own champion instead of re-scoring and replacing the digits one."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from genpipe.cli.cluster import pipeline_params
from pipelines.local import check_run_args, run_local
from zoo import tracking
from zoo.data import load_source
from zoo.data.sources import dataset_name, default_registered_name

LOOSE = '{"test_neg_elbo": {"max": 1000}}'


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("digits", "vae-digits"),
        ("idx:../shared/data/mnist", "vae-mnist"),
        ("idx:/data/mnist/t10k-images-idx3-ubyte.gz", "vae-mnist"),
        ("npz:/data/kmnist-train-imgs.npz", "vae-kmnist-train"),
        ("npz:/data/K49 Train.npz,labels=/data/k49-labels.npz", "vae-k49-train"),
        ("s3://genpipe/data/faces/", "vae-faces"),
        ("s3://genpipe/data/faces/set.npz", "vae-set"),
    ],
)
def test_default_name_is_model_and_dataset(source: str, name: str) -> None:
    assert default_registered_name("vae", source) == name
    assert tracking.check_registered_name(name) == name  # a name MLflow accepts


def test_text_source_name() -> None:
    assert dataset_name("text:~/corpora/Shakespeare.txt") == "shakespeare"
    assert default_registered_name("gpt", "text:/x/tiny shakespeare.txt") == "gpt-tiny-shakespeare"


def test_run_and_submit_default_the_name_and_keep_name() -> None:
    checked = check_run_args("vae", "tiny", {}, "", source="npz:/d/kmnist-train-imgs.npz")
    assert checked["registered_name"] == "vae-kmnist-train"
    assert check_run_args("vae", "tiny", {}, "", "vae", source="digits")["registered_name"] == "vae"
    common = {"preset": "tiny", "sets": [], "experiment": "", "thresholds": ""}
    common.update({"tolerance": 0.0, "test_fraction": 0.1})
    params = pipeline_params("vae", "s3://genpipe/data/mnist", name="", **common)
    assert params["registered_name"] == "vae-mnist"
    assert pipeline_params("vae", "digits", name="vae", **common)["registered_name"] == "vae"


def test_other_dataset_gets_its_own_champion(stack, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    # Another dataset of the same shape and lineage-free name (KMNIST's layout): inverted digits.
    digits = load_source("digits")
    stem = f"kmnist{uuid.uuid4().hex[:6]}-train"
    np.savez(tmp_path / f"{stem}-imgs.npz", 255 - digits.images[..., 0])
    np.savez(tmp_path / f"{stem}-labels.npz", digits.labels.astype(np.uint8))
    res = run_local(
        "vae",
        f"npz:{tmp_path / f'{stem}-imgs.npz'}",
        preset="tiny",
        overrides={"epochs": 1, "steps_per_epoch": 5},
        experiment="genpipe-test-names",
        thresholds=LOOSE,
        start_stack=False,
    )
    assert res.blessed and res.registered_version == "1", res.tags
    c = tracking.client()
    [version] = c.search_model_versions(f"run_id='{res.mlflow_run_id}'")
    assert version.name == f"vae-{stem}"
    assert c.get_model_version_by_alias(f"vae-{stem}", "champion").version == "1"
    # No champion of another dataset was re-scored on this data.
    assert not any(k.startswith("champion_") for k in res.metrics), res.metrics


def test_compiled_pipeline_defaults_to_model_and_dataset(stack, tmp_path: Path) -> None:
    """A compiled pipeline run without registered_name (e.g. from the KFP UI): its tasks
    name the model after the run's model and source, as `genpipe run/submit` do."""
    import yaml

    from components import ingest
    from components.common import recorded_run
    from pipelines.factory import compile_pipeline

    text = Path(compile_pipeline("vae", str(tmp_path / "p.yaml"))).read_text()
    spec = next(yaml.safe_load_all(text))  # the pipeline spec, then the platform config
    param = spec["root"]["inputDefinitions"]["parameters"]["registered_name"]
    assert param["defaultValue"] == "" and param.get("isOptional")
    # Ingest resolves the name once and records it on the MLflow run for evaluate and register.
    c = tracking.client()
    exp = f"genpipe-test-names-{uuid.uuid4().hex[:8]}"
    default = ingest.run("digits", "vae", exp, uuid.uuid4().hex)  # registered_name ""
    assert recorded_run(c, default["mlflow_run_id"]).registered_name == "vae-digits"
    named = ingest.run("digits", "vae", exp, uuid.uuid4().hex, registered_name="vae")
    assert recorded_run(c, named["mlflow_run_id"]).registered_name == "vae"  # kept
