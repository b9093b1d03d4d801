"""RealNVP (Dinh et al., 2017): affine coupling layers with alternating checkerboard masks.

Data handling (exact likelihood, stated once here):
  * Dequantization: the 8-bit value k in 0..255 (recovered as round(255 x) from the [0, 1]
    input) becomes y = (k + u) / 256 with u ~ U(0, 1) per pixel (one fixed draw per example
    in evaluation), so y is in [0, 1)^D.
  * Logit transform: p = a + (1 - 2a) y, z0 = log p - log(1 - p), a = `alpha`; its log-det
    sum(log(1 - 2a) - log p - log(1 - p)) is included.
  * Couplings: z' = b z + (1 - b)(z exp(s(bz)) + t(bz)), s = tanh(.), b the mask; the
    last conv of each s/t network starts at zero so the untrained flow is the logit transform.
  * Base: N(0, I). log p_y(y) = log N(z_K) + sum of log-dets (nats, natural log).
  * Discrete likelihood bound: -log P(k) <= -log p_y(y) + D log 256 (the 1/256 scaling is a
    log-det too); `nll` is this in nats per image (sum over the D = H*W*C dims) and
    bits_per_dim = nll / (D ln 2). A uniform density on [0, 1)^D scores exactly 8.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from zoo import config as cfgmod
from zoo.models.base import GenerativeModel, TrainConfig, f32


@dataclasses.dataclass
class RealNVPConfig(TrainConfig):
    """RealNVP settings (training settings are inherited from TrainConfig)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    couplings: int = 6
    hidden: int = 16
    alpha: float = 0.05
    # sampling temperature of the base Gaussian (1.0 = the model's own distribution)
    temperature: float = 1.0
    #: global gradient-norm clip. The loss is nats per image (a sum over the 784 pixels of
    #: MNIST), so gradients are large: 2e4-5e4 in the first 4 epochs of the default run, with
    #: single-step spikes past 1e6 that an unclipped Adam step turned into a divergence
    #: (at step ~500-575 of 1,400 on MNIST t10k, 2026-12-02)
    clip_norm: float = 1e5
    #: the divergence check's limit on the unclipped norm, scaled like the loss (a per-dim
    #: loss's 1e6 x the 784 dims, rounded up): a clipped spike is not a divergence
    max_grad_norm: float = 1e9

    @classmethod
    def tiny(cls) -> RealNVPConfig:
        return cls(epochs=1, batch_size=16, couplings=2, hidden=4, steps_per_epoch=3)

    def validate(self) -> None:
        super().validate()
        r = cfgmod.require
        r(self.couplings >= 1, f"RealNVPConfig: couplings={self.couplings} must be >= 1")
        r(self.hidden >= 1, f"RealNVPConfig: hidden={self.hidden} must be >= 1")
        r(0 < self.alpha < 0.5, f"RealNVPConfig: alpha={self.alpha} must be in (0, 0.5)")
        r(self.temperature > 0, f"RealNVPConfig: temperature={self.temperature} must be > 0")
        r(self.clip_norm >= 0, f"RealNVPConfig: clip_norm={self.clip_norm} must be >= 0 (0 = off)")


def checkerboard(h: int, w: int, parity: int) -> np.ndarray:
    """[1, h, w, 1] float mask: 1 where (i + j) % 2 == parity (those pixels pass unchanged)."""
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return ((ii + jj) % 2 == parity).astype("float32")[None, :, :, None]


@keras.saving.register_keras_serializable(package="genpipe")
class RealNVP(GenerativeModel):
    """Affine-coupling normalizing flow on dequantized, logit-transformed pixels."""

    name_in_registry = "realnvp"
    family = "image"
    config_cls = RealNVPConfig
    primary_metric = "test_bits_per_dim"
    lower_is_better = True
    # Measured on MNIST (2 CPUs): the untrained flow (logit transform + N(0, I)) scores
    # 10.9 bits/dim, 200 steps of batch 64 reach 4.5; the full default run goes lower.
    default_thresholds = {"test_bits_per_dim": ("max", 5.0)}

    def __init__(
        self, config: dict[str, Any] | RealNVPConfig, data_spec: dict[str, Any], **kwargs: Any
    ):
        super().__init__(config, data_spec, **kwargs)
        cfg: RealNVPConfig = self.cfg  # type: ignore[assignment]
        h, w, c = (int(v) for v in data_spec["shape"])
        self.image_shape = (h, w, c)
        self.dims = h * w * c
        self.masks = [checkerboard(h, w, i % 2) for i in range(cfg.couplings)]
        self.nets = [
            keras.Sequential(
                [
                    keras.layers.Conv2D(cfg.hidden, 3, padding="same", activation="relu"),
                    keras.layers.Conv2D(cfg.hidden, 3, padding="same", activation="relu"),
                    keras.layers.Conv2D(2 * c, 3, padding="same", kernel_initializer="zeros"),
                ],
                name=f"coupling{i}",
            )
            for i in range(cfg.couplings)
        ]

    def build_model(self) -> None:
        # By shape (as a call on a (1, H, W, C) dummy builds them: same variables, values,
        # paths, build shapes), without running the networks' first-time eager kernels.
        for net in self.nets:
            net.build((1, *self.image_shape))
        self.built = True

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        z, _ = self.forward(self.dequantize(x, tf.constant([0, 0])))
        return z

    def dequantize(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        k = tf.round(x * 255.0)
        return (k + tf.random.stateless_uniform(tf.shape(x), seed=seed)) / 256.0

    def _st(self, i: int, zb: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        s, t = tf.split(f32(self.nets[i](zb, training=training)), 2, axis=-1)
        return tf.tanh(s), t

    def forward(self, y: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """y in [0, 1)^D -> (z, log|det dz/dy| per example)."""
        a = self.cfg.alpha
        p = a + (1.0 - 2.0 * a) * y
        z = tf.math.log(p) - tf.math.log1p(-p)
        logdet = tf.reduce_sum(
            math.log(1.0 - 2.0 * a) - tf.math.log(p) - tf.math.log1p(-p), axis=[1, 2, 3]
        )
        for i, b in enumerate(self.masks):
            s, t = self._st(i, z * b, training)
            s = (1.0 - b) * s
            z = b * z + (1.0 - b) * (z * tf.exp(s) + t)
            logdet += tf.reduce_sum(s, axis=[1, 2, 3])
        return z, logdet

    def inverse(self, z: tf.Tensor) -> tf.Tensor:
        for i in reversed(range(len(self.masks))):
            b = self.masks[i]
            s, t = self._st(i, z * b)
            z = b * z + (1.0 - b) * (z - t) * tf.exp(-s)
        a = self.cfg.alpha
        return (tf.sigmoid(z) - a) / (1.0 - 2.0 * a)

    def nll_nats(self, x: tf.Tensor, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Per-example -log P(k) bound in nats (dequantized, 8-bit; see module docstring)."""
        z, logdet = self.forward(self.dequantize(x, seed), training)
        log_base = tf.reduce_sum(-0.5 * tf.square(z) - 0.5 * math.log(2 * math.pi), axis=[1, 2, 3])
        return -(log_base + logdet) + self.dims * math.log(256.0)

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32) if ctx else tf.constant(0)
        seed = tf.stack([tf.cast(step, tf.int32), rid])
        with tf.GradientTape() as tape:
            nll = self.nll_nats(batch["image"], seed, training=True)
            loss = tf.reduce_sum(nll) / global_batch_size
        norm = self.apply_gradients(
            optimizers["main"], tape, loss, self.trainable_variables, self.cfg.clip_norm
        )
        return {
            "loss": loss,
            "bits_per_dim": loss / (self.dims * math.log(2.0)),
            "grad_norm": norm / self.replicas(),
        }

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        nll = self.nll_nats(batch["image"], tf.constant([2024, 0]))
        return {"nll": nll, "bits_per_dim": nll / (self.dims * math.log(2.0))}

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        temperature = float(kwargs.pop("temperature", self.cfg.temperature))
        if kwargs:
            raise TypeError(f"RealNVP.generate got unexpected arguments {sorted(kwargs)}")
        z = np.random.default_rng(seed).standard_normal((n, *self.image_shape)).astype("float32")
        out = [
            self.inverse(tf.constant(z[i : i + 500] * temperature)).numpy()
            for i in range(0, n, 500)
        ]
        return np.concatenate(out).clip(0.0, 1.0).astype("float32")
