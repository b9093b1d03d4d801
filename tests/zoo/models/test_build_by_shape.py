"""Image models are built by shape, not by an eager forward pass on a dummy batch: the
variables a forward pass would create (order, paths, dtypes, initial values, build shapes)
without the first-time eager kernels that were most of a fresh process's build (issue 14
fixed costs: the train task's model build, every load of the model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_helpers import in_fresh_thread

from zoo import models
from zoo.models.base import dtype_policy

SPEC = {"shape": [28, 28, 1], "num_classes": 10}


def _vae_forward(model: Any) -> None:
    mean, _ = model.encode(tf.zeros((1, 28, 28, 1)))
    model.decode_logits(mean)


def _gan_forward(model: Any) -> None:
    labels = tf.zeros((1,), tf.int64) if model.conditional else None
    model.disc(model.gen(tf.zeros((1, model.cfg.latent_dim)), labels), labels)


def _realnvp_forward(model: Any) -> None:
    for net in model.nets:
        net(tf.zeros((1, 28, 28, 1)))


def _pixelcnn_forward(model: Any) -> None:
    model.logits(tf.zeros((1, 28, 28, 1)))


#: the former build_model of each model built by shape: one eager call on a batch of one
FORWARD: dict[str, Callable[[Any], None]] = {
    "vae": _vae_forward,
    "dcgan": _gan_forward,
    "cgan": _gan_forward,
    "wgan_gp": _gan_forward,
    "realnvp": _realnvp_forward,
    "pixelcnn": _pixelcnn_forward,
}
#: the model methods a forward pass goes through (patched to fail in the no-forward test)
ENTRY = {"vae": ("encode", "decode_logits"), "realnvp": ("forward",), "pixelcnn": ("logits",)}


def _make(name: str, precision: str, by_shape: bool) -> Any:
    keras.utils.set_random_seed(0)
    cfg = models.resolve_config(name, "tiny", {"precision": precision})
    with dtype_policy(precision):
        model = models.get(name)(cfg, SPEC)
        if by_shape:
            model.build_model()
        else:
            FORWARD[name](model)
    return model


def _parts(model: Any) -> list[Any]:
    """The model's layers, also those held in lists (RealNVP's nets, PixelCNN's blocks)."""
    out: list[Any] = []
    for v in vars(model).values():
        out += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, keras.layers.Layer)]
    return out


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(FORWARD))
def test_build_by_shape_creates_what_a_forward_pass_creates(name, precision):
    a = in_fresh_thread(lambda: _make(name, precision, by_shape=False))
    b = in_fresh_thread(lambda: _make(name, precision, by_shape=True))
    assert [(v.path, v.dtype, tuple(v.shape)) for v in a.variables] == [
        (v.path, v.dtype, tuple(v.shape)) for v in b.variables
    ]
    for va, vb in zip(a.variables, b.variables, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)
    assert [p.get_build_config() for p in _parts(a)] == [p.get_build_config() for p in _parts(b)]
    labels = {"labels": np.arange(4) % 10} if a.conditional else {}
    n = 1 if name == "pixelcnn" else 4  # sequential sampling: one image is enough
    np.testing.assert_array_equal(a.generate(n, seed=1, **labels), b.generate(n, seed=1, **labels))


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_build_runs_no_forward_pass(name, monkeypatch):
    def no_call(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("build_model ran the network")

    monkeypatch.setattr(keras.Sequential, "call", no_call)  # an eager call of a Sequential
    cls = models.get(name)
    for method in ENTRY.get(name, ("gen", "disc")):
        monkeypatch.setattr(cls, method, no_call)
    model = _make(name, "float32", by_shape=True)
    assert model.built and model.trainable_variables
