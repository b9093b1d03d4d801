"""The VAE is built by shape, not by an eager forward pass on a dummy image: the variables a
forward pass would create (order, paths, shapes, initial values, build shapes) without the
first-time eager kernels that were most of a fresh process's build (issue 14 fixed costs:
the train task's model build, every load of the model)."""

from __future__ import annotations

import threading
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo import models
from zoo.models.base import dtype_policy
from zoo.models.vae import VAE

SPEC = {"shape": [28, 28, 1], "num_classes": 10}


def _fresh(fn: Any) -> Any:
    """Run in a new thread: Keras' auto-naming counters start from zero in each."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def _by_forward_pass(precision: str) -> VAE:
    """The former build: one eager call on a (1, H, W, C) zero image."""
    keras.utils.set_random_seed(0)
    cfg = models.resolve_config("vae", "tiny", {"precision": precision})
    with dtype_policy(precision):
        model = VAE(cfg, SPEC)
        mean, _ = model.encode(tf.zeros((1, 28, 28, 1)))
        model.decode_logits(mean)
    return model


def _built(precision: str) -> VAE:
    keras.utils.set_random_seed(0)
    cfg = models.resolve_config("vae", "tiny", {"precision": precision})
    with dtype_policy(precision):
        model = VAE(cfg, SPEC)
        model.build_model()
    return model


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_build_by_shape_creates_what_a_forward_pass_creates(precision):
    a, b = _fresh(lambda: _by_forward_pass(precision)), _fresh(lambda: _built(precision))
    assert [(v.path, v.dtype, tuple(v.shape)) for v in a.variables] == [
        (v.path, v.dtype, tuple(v.shape)) for v in b.variables
    ]
    for va, vb in zip(a.variables, b.variables, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)
    for part in ("encoder", "to_mean", "to_logvar", "decoder"):
        assert getattr(a, part).get_build_config() == getattr(b, part).get_build_config()
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    np.testing.assert_array_equal(a.generate(4, seed=1), b.generate(4, seed=1))


def test_build_runs_no_forward_pass(monkeypatch):
    def no_call(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("build_model ran the network")

    monkeypatch.setattr(VAE, "encode", no_call)
    monkeypatch.setattr(VAE, "decode_logits", no_call)
    monkeypatch.setattr(keras.Sequential, "call", no_call)
    model = _built("float32")
    assert model.built and len(model.trainable_variables) == 20
