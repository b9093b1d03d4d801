"""The common model test: every registered model, on its tiny config.

One train step lowers nothing in particular but must produce finite losses and move the
weights; `generate` has the right shape, range and determinism; the `.keras` file round-trips
under Keras safe mode and generates the same samples.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo import models

IMAGE_SPEC = {"shape": [28, 28, 1], "num_classes": 10}
# Text models: <unk> + a small character vocabulary, built as the trainer builds it.
TEXT_SPEC = {
    "shape": None,
    "num_classes": None,
    "vocab": ["<unk>", *"\n !,.:;?ABCDEFabcdefghijklmnop"],
}
SPECS = {"image": IMAGE_SPEC, "text": TEXT_SPEC}


def _batch(family: str, n: int = 8) -> dict:
    rng = np.random.default_rng(0)
    if family == "image":
        return {
            "image": tf.constant(rng.random((n, 28, 28, 1), dtype=np.float32)),
            "label": tf.constant(rng.integers(0, 10, n), tf.int64),
        }
    if family == "text":
        ids = rng.integers(1, len(TEXT_SPEC["vocab"]), (n, 17))
        return {"x": tf.constant(ids[:, :-1], tf.int32), "y": tf.constant(ids[:, 1:], tf.int32)}
    raise AssertionError(f"no test batch for family {family!r}: add one here")


def _build(name: str):
    cls = models.get(name)
    model = cls(cls.tiny_config(), SPECS[cls.family])
    model.build_model()
    return cls, model


@pytest.mark.parametrize("name", models.names())
def test_registry_entry_is_complete(name):
    cls = models.get(name)
    assert cls.name_in_registry == name
    assert cls.primary_metric and cls.family in ("image", "text")
    tiny, default = cls.tiny_config(), cls.default_config()
    tiny.validate()
    default.validate()
    assert tiny.epochs <= default.epochs


def test_evaluation_hooks_are_declared_on_the_base_class():
    """`conditional` and `eval_samples` (read by the evaluator and the threshold check) are
    declared, typed and defaulted on GenerativeModel, not left to getattr fallbacks."""
    from zoo.models.base import GenerativeModel

    assert GenerativeModel.__dict__["conditional"] is False
    assert GenerativeModel.__dict__["eval_samples"] == 0
    hints = GenerativeModel.__annotations__
    assert "bool" in str(hints["conditional"]) and "int" in str(hints["eval_samples"])


@pytest.mark.parametrize("name", models.names())
def test_evaluation_hooks_have_their_types(name):
    cls = models.get(name)
    assert isinstance(cls.conditional, bool)
    assert isinstance(cls.eval_samples, int) and cls.eval_samples >= 0
    assert not cls.conditional or cls.family == "image"


@pytest.mark.parametrize("name", models.names())
def test_one_train_step_is_finite_and_updates_weights(name):
    cls, model = _build(name)
    optimizers = model.make_optimizers()
    before = [w.numpy().copy() for w in model.trainable_weights]
    out = model.train_step_replica(_batch(cls.family), optimizers, 8, tf.constant(0, tf.int64))
    assert {"loss", "grad_norm"} <= set(out)
    assert all(np.isfinite(float(v)) for v in out.values())
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", models.names())
def test_generate_shape_range_and_seed(name):
    cls, model = _build(name)
    if cls.family == "text":
        text = model.generate("ab", max_new_tokens=40, temperature=1.0, seed=7)
        assert isinstance(text, str) and len(text) == 42 and text.startswith("ab")
        assert set(text) <= set(TEXT_SPEC["vocab"][1:])
        assert text == model.generate("ab", max_new_tokens=40, temperature=1.0, seed=7)
        assert text != model.generate("ab", max_new_tokens=40, temperature=1.0, seed=8)
        return
    x = model.generate(5, seed=7)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x, model.generate(5, seed=7))
    assert not np.array_equal(x, model.generate(5, seed=8))


@pytest.mark.parametrize("name", models.names())
def test_eval_batch_is_per_example(name):
    cls, model = _build(name)
    out = model.eval_batch(_batch(cls.family, n=6))
    for k, v in out.items():
        assert v.shape == (6,), k
        assert np.all(np.isfinite(v.numpy())), k


@pytest.mark.parametrize("name", models.names())
def test_save_load_round_trip_safe_mode(name, tmp_path):
    """What evaluate, serving and `genpipe generate` load is the saved model exactly: the same
    variables (in order, shapes, values bit for bit), per-example held-out values and samples."""
    cls, model = _build(name)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    assert type(loaded) is type(model)
    assert loaded.cfg == model.cfg
    # (variable names carry per-process layer counters, e.g. dense_38: not compared)
    assert [tuple(v.shape) for v in loaded.weights] == [tuple(v.shape) for v in model.weights]
    for saved, back in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(back), np.asarray(saved), err_msg=saved.path)
    batch = _batch(cls.family, n=4)
    for k, v in model.eval_batch(batch).items():
        np.testing.assert_array_equal(loaded.eval_batch(batch)[k].numpy(), v.numpy(), err_msg=k)
    if cls.family == "text":
        assert loaded.data_spec["vocab"] == TEXT_SPEC["vocab"]
        assert loaded.generate("ab", 30, 0.8, seed=1) == model.generate("ab", 30, 0.8, seed=1)
        return
    np.testing.assert_array_equal(loaded.generate(4, seed=1), model.generate(4, seed=1))


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", models.names())
def test_mixed_precision_trains(name, precision):
    """The GPU profiles' precision: float16 (with dynamic loss scaling) or bfloat16 layers,
    float32 variables and losses."""
    from zoo.train import build_for_training

    cls = models.get(name)
    cfg = dataclasses.replace(cls.tiny_config(), precision=precision)
    model, optimizers = build_for_training(cls, cfg, SPECS[cls.family])
    assert keras.config.dtype_policy().name == "float32"  # the policy did not leak
    policies = {layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)}
    assert precision in policies
    scaled = precision == "mixed_float16"  # bfloat16 has float32's range: no loss scaling
    assert all(
        isinstance(o, keras.optimizers.LossScaleOptimizer) == scaled for o in optimizers.values()
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    step = tf.function(lambda b, s: model.train_step_replica(b, optimizers, 8, s))
    batch = _batch(cls.family)
    for i in range(30 if scaled else 3):
        out = step(batch, tf.constant(i, tf.int64))
        # Losses are float32 even though the layers compute in 16 bits.
        assert out["loss"].dtype == tf.float32
        assert all(np.isfinite(float(v)) for v in out.values()), (i, out)
    if scaled:
        # The updates went through the loss-scaling optimizers: finite steps count up to the
        # next scale increase (overflowing ones are skipped and halve the scale, from 2**15).
        assert all(int(o.step_counter) > 0 for o in optimizers.values())
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    if cls.family == "image":
        x = model.generate(3, seed=1)
        assert x.dtype == np.float32 and np.isfinite(x).all()
    else:
        assert len(model.generate("ab", max_new_tokens=5, seed=1)) == 7
