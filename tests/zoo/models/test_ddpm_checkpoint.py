"""DDPM: the EMA U-Net survives a TensorFlow checkpoint; the newer options keep old configs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from zoo import config as cfgmod
from zoo.errors import ConfigError
from zoo.models.ddpm import DDPM, LEGACY, DDPMConfig

SPEC = {"shape": [28, 28, 1], "num_classes": 10}


def _model(**kw: object) -> DDPM:
    m = DDPM(dataclasses.replace(DDPMConfig.tiny(), **kw), SPEC)
    m.build_model()
    return m


@pytest.mark.parametrize("block", ["plain", "res"])
def test_checkpoint_restores_every_weight_of_both_unets(tmp_path, block: str) -> None:
    # The trainer checkpoints tf.train.Checkpoint(model=..., opt_...=...); bench_quality and
    # resumed runs restore from it. Blocks held in lists were missing (Keras 3 TrackedList),
    # so a restored EMA U-Net sampled with random blocks.
    a = _model(block=block)
    for w in [*a.net.weights, *a.ema_net.weights]:
        w.assign(w + 0.25)
    path = tf.train.Checkpoint(model=a).save(str(tmp_path / "ckpt"))
    b = _model(block=block)
    tf.train.Checkpoint(model=b).restore(path).assert_existing_objects_matched()
    for net in ("net", "ema_net"):
        pairs = zip(getattr(a, net).weights, getattr(b, net).weights, strict=True)
        for x, y in pairs:
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=f"{net}: {x.path}")


def test_saved_config_without_the_new_keys_keeps_the_old_behaviour() -> None:
    saved = cfgmod.to_dict(DDPMConfig.tiny())
    for key in LEGACY:
        saved.pop(key)  # a model saved before these settings existed
    m = DDPM(saved, SPEC)
    assert (m.cfg.block, m.cfg.prediction, m.cfg.loss_weighting) == ("plain", "eps", "none")
    assert m.cfg.sample_eta == 0.0 and m.cfg.beta_schedule == "linear"
    m = DDPM({**saved, "block": "res", "prediction": "v"}, SPEC)  # named keys are kept
    assert (m.cfg.block, m.cfg.prediction) == ("res", "v")


def test_v_prediction_converts_to_the_true_noise() -> None:
    m = _model(prediction="v")
    t = tf.constant([0, 7, 19])
    x0 = tf.random.uniform([3, 28, 28, 1], -1.0, 1.0, seed=1)
    eps = tf.random.normal([3, 28, 28, 1], seed=2)
    ab = tf.gather(tf.constant(m.alpha_bar, tf.float32), t)[:, None, None, None]
    xt = tf.sqrt(ab) * x0 + tf.sqrt(1.0 - ab) * eps
    v = tf.sqrt(ab) * eps - tf.sqrt(1.0 - ab) * x0
    np.testing.assert_allclose(m._to_eps(v, xt, t).numpy(), eps.numpy(), atol=1e-5)


def test_min_snr_weights_only_the_low_noise_timesteps() -> None:
    batch = {"image": tf.random.uniform([64, 28, 28, 1], seed=3)}
    seed = tf.constant([5, 0])
    plain = _model(timesteps=200, beta_end=0.05)
    weighted = _model(timesteps=200, beta_end=0.05, loss_weighting="min_snr", min_snr_gamma=5.0)
    weighted.net.set_weights(plain.net.get_weights())
    a = plain._per_example_mse(batch["image"], seed, plain.net, train=True).numpy()
    b = weighted._per_example_mse(batch["image"], seed, weighted.net, train=True).numpy()
    ratio = b / a
    assert np.all(ratio <= 1.0 + 1e-6) and ratio.min() < 0.5  # SNR > 10 at small t
    assert np.any(np.isclose(ratio, 1.0))  # SNR <= gamma: unweighted


def test_ddim_eta_adds_noise_and_is_validated() -> None:
    m = _model()
    a, b = m.generate(2, seed=1), m.generate(2, seed=1, eta=1.0)
    assert a.shape == b.shape == (2, 28, 28, 1) and not np.allclose(a, b)
    np.testing.assert_array_equal(m.generate(2, seed=1, eta=1.0), b)  # seeded
    with pytest.raises(ConfigError, match="eta=1.5 must be in"):
        m.generate(2, eta=1.5)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("block", "dense", "block='dense' is not plain or res"),
        ("prediction", "x0", "prediction='x0' is not eps or v"),
        ("loss_weighting", "snr", "loss_weighting='snr' is not none or min_snr"),
        ("sample_eta", 2.0, "sample_eta=2.0 must be in"),
    ],
)
def test_bad_option_is_one_clear_error(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(DDPMConfig(), **{key: value}).validate()
