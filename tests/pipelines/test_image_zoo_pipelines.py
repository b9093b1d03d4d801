"""One tiny pipeline per image model family through kfp.local against the real embedded stack.

GAN (the conditional GAN, which also exercises labels end to end), diffusion (DDPM), flow
(RealNVP) and autoregressive (PixelCNN): ingest -> train -> evaluate -> register on the
offline digits data, with the sample metrics (FID beside its real-vs-real floor, KID,
precision/recall, class checks) and, for likelihood models, test bits/dim. Every image
zoo pipeline also compiles for the cluster. (The divergence guard is the trainer's, shared by
all models: tests/pipelines cover it once.)
"""

import json
import uuid

import pytest
import yaml
from kfp import compiler

from pipelines.local import run_local
from zoo import models, tracking

SAMPLE_METRICS = {
    "test_fid",
    "test_fid_floor",
    "test_kid",
    "test_kid_floor",
    "test_precision",
    "test_recall",
    "test_gen_class_entropy_bits",
    "test_gen_class_max_share",
    "test_gen_class_tv",
}


@pytest.fixture
def home(stack, monkeypatch):
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    monkeypatch.setenv("GENPIPE_EVAL_SAMPLES", "100")  # tiny models: keep sampling cheap
    return stack.state_dir


def _loose(name: str) -> str:
    """Thresholds every tiny model passes (tiny models are far from the production ones)."""
    cls = models.get(name)
    loose = {
        m: ({"max": 1e12} if d == "max" else {"min": -1.0})
        for m, (d, _) in cls.default_thresholds.items()
    }
    return json.dumps(loose)


@pytest.mark.parametrize("model", ["cgan", "ddpm", "realnvp", "pixelcnn"])
def test_image_family_pipeline_registers_with_sample_metrics(home, model):
    name = f"{model}-e2e-{uuid.uuid4().hex[:8]}"
    r = run_local(
        model,
        "digits",
        preset="tiny",
        experiment="genpipe-test-image-zoo",
        registered_name=name,
        thresholds=_loose(model),
        start_stack=False,
    )
    assert r.blessed and r.registered_version == "1", r.tags
    assert set(r.metrics) >= SAMPLE_METRICS
    assert r.metrics["test_eval_samples"] == 100
    # The floor is real-vs-real: an untrained tiny model is far above it.
    assert r.metrics["test_fid"] > r.metrics["test_fid_floor"] > 0
    assert 0 <= r.metrics["test_precision"] <= 1 and 0 <= r.metrics["test_recall"] <= 1
    assert r.metrics["test_feature_classifier_accuracy"] > 0.8
    if model == "cgan":
        assert {
            "test_cond_accuracy",
            "test_cond_accuracy_0",
            "train_g_loss",
            "train_d_loss",
        } <= set(r.metrics)
        assert "train_g_grad_norm" in r.metrics and "evaluation/by_label.png" in r.artifacts
    if models.get(model).primary_metric == "test_bits_per_dim":
        assert 0 < r.metrics["test_bits_per_dim"] < 12
    assert {
        "evaluation/samples.png",
        "evaluation/report.html",
        "evaluation/evaluation_notes.txt",
    } <= set(r.artifacts)
    version = tracking.client().get_model_version_by_alias(name, "champion")
    assert version.run_id == r.mlflow_run_id


IMAGE_ZOO = ["dcgan", "wgan_gp", "cgan", "ddpm", "realnvp", "pixelcnn"]


@pytest.mark.parametrize("model", IMAGE_ZOO)
def test_image_zoo_pipeline_compiles_for_the_cluster(model, tmp_path):
    from pipelines.factory import build_pipeline

    path = tmp_path / f"{model}.yaml"
    compiler.Compiler().compile(pipeline_func=build_pipeline(model, "gke"), package_path=str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    assert spec["pipelineInfo"]["name"] == f"genpipe-{model.replace('_', '-')}"
    # register runs inside the blessing condition: look at the compiled components.
    comps = {f"comp-{c}" for c in ("ingest", "train", "evaluate", "register")}
    assert comps <= set(spec["components"])
