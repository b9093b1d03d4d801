"""The trainer's fixed cost (issue 14): the compiled step is traced once per run, without
autograph, and evaluation and DDPM sampling do not trace again for what they have seen.

Tracing, not computing, was most of a tiny run's trainer time: autograph converted the step's
source (~2 s per process), a K-steps-per-call loop traced the step twice, a split's last
partial batch traced eval_batch a second time and every DDPM `generate` a new sampler step.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

from zoo import models
from zoo.data import fetch, load_source, publish, split
from zoo.models import resolve_config
from zoo.train import Trainer, evaluate_split


@pytest.fixture(scope="module")
def digits(stack, tmp_path_factory):
    from zoo.storage import ObjectStore

    store = ObjectStore.from_env()
    manifest = publish(split(load_source("digits")), store, source="digits")
    return fetch(manifest["uri"], store, tmp_path_factory.mktemp("cache"))


def _count_calls(monkeypatch, cls, method):
    """Count the Python calls of `cls.method` (a tf.function runs it once per trace)."""
    calls = []
    original = getattr(cls, method)

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, counted)
    return calls


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_step_traced_once_per_run_without_autograph(digits, tmp_path, monkeypatch, steps_per_call):
    converted = []
    original = autograph_api._convert_actual

    def spy(entity, program_ctx):
        converted.append(getattr(entity, "__module__", "") or "")
        return original(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", spy)
    vae = models.get("vae")
    traces = _count_calls(monkeypatch, vae, "train_step_replica")
    cfg = resolve_config(
        "vae", "tiny", {"epochs": 2, "steps_per_epoch": 5, "steps_per_call": steps_per_call}
    )
    losses = []
    res = Trainer("vae", cfg, digits, tmp_path / "t", on_epoch=lambda e, m: losses.append(m)).run()
    assert res.steps == 10 and all(np.isfinite(m["train_loss"]) for m in losses)
    # Two epochs, calls of 4 and 1 steps: still one trace of the step.
    assert len(traces) == 1
    ours = [m for m in converted if m.startswith(("zoo.train", "zoo.models"))]
    assert ours == [], f"autograph converted trainer/model code: {ours}"


def test_evaluate_split_traces_once_with_a_partial_last_batch(digits, monkeypatch):
    cls = models.get("vae")
    model = cls(cls.tiny_config(), {"shape": list(digits.shape)})
    model.build_model()
    n = digits.count("test")
    batch_size = 64
    assert n % batch_size, "the split must end with a partial batch for this test"
    traces = _count_calls(monkeypatch, cls, "eval_batch")
    got = evaluate_split(model, digits, "test", batch_size=batch_size)
    assert len(traces) == 1
    monkeypatch.undo()
    # The same exact means as scoring the same batches eagerly (the VAE's noise is drawn per
    # batch, so the batches must be the same ones).
    sums, count = {}, 0
    for batch in model.make_dataset(digits, "test", batch_size, shuffle=False):
        for k, v in model.eval_batch(batch).items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(v.numpy(), dtype="float64"))
        count += int(batch["image"].shape[0])
    want = {k: v / count for k, v in sums.items()}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5)


def test_ddpm_generate_traces_its_sampler_step_once(monkeypatch):
    cls = models.get("ddpm")
    model = cls(cls.tiny_config(), {"shape": [28, 28, 1]})
    model.build_model()
    traces = _count_calls(monkeypatch, cls, "_to_eps")
    first = model.generate(3, seed=1)
    again = model.generate(3, seed=1)
    other = model.generate(3, seed=2)
    assert len(traces) == 1
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert tf.reduce_all(tf.math.is_finite(first))
