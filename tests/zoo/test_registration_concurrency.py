"""Concurrent registration, for real: 10 processes register and promote one model name at
once against the MLflow server. Every version is recorded, there is exactly one champion and
it is the best blessed one; `candidate` is the newest version."""

import multiprocessing as mp
import os
import uuid

import pytest

# Nothing here imports TensorFlow at module level: the spawned workers import this module.
from zoo import models, registration, tracking

N = 10
SPEC = {"shape": [28, 28, 1], "num_classes": 10}
FINGERPRINT = "c" * 64


def _register_one(args: tuple[str, str, float, dict]) -> dict:
    name, run_id, value, env = args
    os.environ.update(env)
    c = tracking.client()
    tags = registration.standard_tags(
        FINGERPRINT, f"pipe-{run_id[:6]}", "test", "test_neg_elbo", value
    )
    # Every pipeline was evaluated before any champion existed: all claim "better".
    res = registration.register(
        c, name, run_id, better_than_champion=True, expected_champion="", tags=tags
    )
    return {"version": res.version, "promoted": res.promoted, "value": value, "run_id": run_id}


@pytest.fixture
def logged_runs(stack, tmp_path):
    """N runs sharing one logged model (logging it N times would only test MLflow's speed)."""
    from zoo.train import write_model_config

    cls = models.get("vae")
    model = cls(cls.tiny_config(), SPEC)
    model.build_model()
    out = tmp_path / "model"
    out.mkdir()
    model.save(out / "model.keras")
    write_model_config(out, "vae", model.cfg, SPEC, {"fingerprint": FINGERPRINT})
    c = tracking.client()
    first = tracking.get_or_create_run(c, "genpipe-test-concurrent", uuid.uuid4().hex, "vae")
    model_uri = registration.log_model(c, first, out)
    runs = [first]
    for _ in range(N - 1):
        run_id = tracking.get_or_create_run(c, "genpipe-test-concurrent", uuid.uuid4().hex, "vae")
        c.set_tag(run_id, registration.TAG_MODEL_URI, model_uri)
        runs.append(run_id)
    return runs


def test_parallel_registrations_leave_one_champion_the_best(stack, logged_runs):
    name = f"vae-conc-{uuid.uuid4().hex[:8]}"
    values = [100.0 + ((i * 7) % N) for i in range(N)]  # distinct; the best is 100.0
    ctx = mp.get_context("spawn")
    with ctx.Pool(N) as pool:
        results = pool.map(
            _register_one,
            [(name, r, v, dict(stack.env)) for r, v in zip(logged_runs, values, strict=True)],
        )
    c = tracking.client()
    versions = c.search_model_versions(f"name='{name}'")
    assert len(versions) == N and {r["version"] for r in results} == {v.version for v in versions}
    champ = c.get_model_version_by_alias(name, "champion")
    best = min(results, key=lambda r: r["value"])
    assert champ.run_id == best["run_id"], (champ.version, results)
    assert sum(r["promoted"] for r in results) >= 1
    assert c.get_model_version_by_alias(name, "candidate").version == str(N)
    # The lock is released: no `.genpipe-lock` model is left behind.
    assert not c.search_registered_models(f"name='{name}{registration.LOCK_SUFFIX}'")
