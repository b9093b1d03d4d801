"""Text generation runs in NumPy from the weights: no TensorFlow call (and no trace) per
character, with the logits the Keras forward pass gives, for every cell / depth / head."""

import numpy as np
import pytest
import tensorflow as tf

from zoo import models
from zoo.models.text_common import build_vocab, sample_next

TRAIN = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
SPEC = {"shape": None, "num_classes": None, "vocab": build_vocab(TRAIN)}

VARIANTS = [
    ("char_rnn", {"cell": "gru", "n_layers": 2}),
    ("char_rnn", {"cell": "lstm", "n_layers": 2}),
    ("gpt", {"n_layer": 2, "tie_weights": True}),
    ("gpt", {"n_layer": 2, "tie_weights": False}),
]


def _trained_like(name, overrides):
    """A tiny model whose weights are all non-trivial (random biases and norms too)."""
    model = models.get(name)(models.resolve_config(name, "tiny", overrides), SPEC)
    model.build_model()
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(
            rng.normal(0.0, 0.3, v.shape).astype("float32") + (1.0 if "gamma" in v.path else 0.0)
        )
    return model


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_numpy_steps_give_the_keras_logits(name, overrides):
    model = _trained_like(name, overrides)
    n = model.context_length
    ids = np.random.default_rng(1).integers(0, model.codec.size, n + 6).astype("int32")
    logits, state = model._prime(ids[:3])
    full = model.logits(tf.constant(ids[None, :n])).numpy()[0]
    np.testing.assert_allclose(logits, full[2], atol=2e-4)
    for k in range(3, len(ids)):
        logits, state = model._advance(state, int(ids[k]))
        if k < n:
            np.testing.assert_allclose(logits, full[k], atol=2e-4)
        elif name == "gpt":  # past the context, the GPT slides its window
            window = ids[None, k + 1 - n : k + 1]
            ref = model.logits(tf.constant(window)).numpy()[0, -1]
            np.testing.assert_allclose(logits, ref, atol=2e-4)
    # The weights are read at every priming: a model trained further samples from its new ones.
    for v in model.weights:
        v.assign(v.numpy() * 0.5)
    full = model.logits(tf.constant(ids[None, :3])).numpy()[0]
    np.testing.assert_allclose(model._prime(ids[:3])[0], full[2], atol=2e-4)


def _reference_sample(model, prompt, n, temperature, seed):
    """The documented sampling (text_common.generate) on the Keras forward pass's logits."""
    rng = np.random.default_rng(seed)
    ids = list(model.codec.encode(prompt))
    out = []
    for _ in range(n):
        window = ids[-model.context_length :]
        logits = model.logits(tf.constant([window], tf.int32)).numpy()[0, -1]
        tok = sample_next(logits, temperature, 0, rng)
        out.append(tok)
        ids.append(tok)
    return prompt + model.codec.decode(out)


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_generation_makes_no_tensorflow_call(name, overrides, monkeypatch):
    # Before: each character was a tf.function call (traced on first use in every process:
    # `genpipe generate` of 200 characters spent ~1.5 s there). Now the forward pass is
    # never entered while generating, and the same seed gives the same text as sampling
    # from the Keras logits (within the context, where the RNN's state equals a re-read).
    model = _trained_like(name, overrides)
    n = model.context_length - 3
    expected = _reference_sample(model, "Fi", n, 0.9, seed=7)

    def refuse(*args, **kwargs):
        raise AssertionError("generation called the TensorFlow forward pass")

    monkeypatch.setattr(model, "logits", refuse)
    monkeypatch.setattr(model, "call", refuse)
    if name == "char_rnn":
        monkeypatch.setattr(model, "_run", refuse)
    assert model.generate("Fi", n, temperature=0.9, seed=7) == expected


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_char_rnn_builds_and_loads_without_a_forward_pass(cell, tmp_path, monkeypatch):
    # Before: build_model ran the recurrent layers eagerly over `nchars` steps, and every
    # load of the model (`genpipe generate`, evaluate) paid it: 2.6-5.6 s at load 14 for the
    # default config, now 0.5-1.4 s. The built weights are the ones a forward pass creates,
    # so a model saved before loads into them.
    import keras

    from zoo.models.char_rnn import CharRNN

    model = _trained_like("char_rnn", {"cell": cell, "n_layers": 2})
    model.save(tmp_path / "model.keras")
    expected = model.generate("Fi", 30, temperature=0.9, seed=3)
    # The variables a forward pass creates (how models saved before this were built).
    by_forward = CharRNN(model.cfg, SPEC)
    by_forward.logits(tf.zeros((1, 4), tf.int32))
    shapes = [(v.path, tuple(v.shape)) for v in model.weights]
    assert [(v.path, tuple(v.shape)) for v in by_forward.weights] == shapes

    def refuse(*args, **kwargs):
        raise AssertionError("building ran the recurrent forward pass")

    monkeypatch.setattr(CharRNN, "_run", refuse)
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert loaded.generate("Fi", 30, temperature=0.9, seed=3) == expected
