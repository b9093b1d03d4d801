"""Variational autoencoder (Kingma & Welling, 2014) with a convolutional encoder/decoder.

Likelihood convention: the decoder is a Bernoulli per pixel whose targets are the grey levels
x in [0, 1] (the keras-io convention; MNIST is not binarized). The reported `neg_elbo` is
    recon + KL = sum_pixels BCE(x, decoder(z)) + KL(q(z|x) || N(0, I))
in nats per image, summed over the H*W*C pixels and averaged over images, with z drawn once
per image from q(z|x) with a fixed seed (deterministic evaluation). The KL weight and its
linear warm-up apply to training only; evaluation always uses the full ELBO.
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
class VAEConfig(TrainConfig):
    """VAE settings (training settings are inherited from TrainConfig)."""

    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 1e-3
    latent_dim: int = 16
    filters: tuple[int, ...] = (32, 64)
    hidden_dim: int = 256
    # beta of the KL term and the number of steps over which it ramps linearly from 0 to beta
    # (warm-up avoids posterior collapse early in training).
    kl_weight: float = 1.0
    kl_warmup_steps: int = 500

    @classmethod
    def tiny(cls) -> VAEConfig:
        return cls(
            epochs=1,
            batch_size=32,
            latent_dim=4,
            filters=(8, 16),
            hidden_dim=32,
            learning_rate=3e-3,
            kl_warmup_steps=2,
            steps_per_epoch=3,
        )

    def validate(self) -> None:
        super().validate()
        cfgmod.require(
            self.latent_dim >= 1, f"VAEConfig: latent_dim={self.latent_dim} must be >= 1"
        )
        cfgmod.require(
            len(self.filters) >= 1 and all(f >= 1 for f in self.filters),
            f"VAEConfig: filters={self.filters} must be one or more positive integers",
        )
        cfgmod.require(
            self.hidden_dim >= 1, f"VAEConfig: hidden_dim={self.hidden_dim} must be >= 1"
        )
        cfgmod.require(self.kl_weight >= 0, f"VAEConfig: kl_weight={self.kl_weight} must be >= 0")
        cfgmod.require(
            self.kl_warmup_steps >= 0,
            f"VAEConfig: kl_warmup_steps={self.kl_warmup_steps} must be >= 0",
        )


@keras.saving.register_keras_serializable(package="genpipe")
class VAE(GenerativeModel):
    """Convolutional VAE; `generate` decodes z ~ N(0, I) to pixel means in [0, 1]."""

    name_in_registry = "vae"
    family = "image"
    config_cls = VAEConfig
    primary_metric = "test_neg_elbo"
    lower_is_better = True
    # An untrained VAE scores ~550 nats on MNIST; a useful one is well below 150.
    default_thresholds = {"test_neg_elbo": ("max", 250.0)}

    def __init__(
        self, config: dict[str, Any] | VAEConfig, data_spec: dict[str, Any], **kwargs: Any
    ):
        super().__init__(config, data_spec, **kwargs)
        cfg: VAEConfig = self.cfg  # type: ignore[assignment]
        h, w, c = (int(v) for v in data_spec["shape"])
        self.image_shape = (h, w, c)
        down = 2 ** len(cfg.filters)
        # The decoder upsamples a (ceil(h/down), ceil(w/down)) map and crops, so any size works.
        self._h0, self._w0 = math.ceil(h / down), math.ceil(w / down)
        self.encoder = keras.Sequential(
            [
                keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu")
                for f in cfg.filters
            ]
            + [keras.layers.Flatten(), keras.layers.Dense(cfg.hidden_dim, activation="relu")],
            name="encoder",
        )
        self.to_mean = keras.layers.Dense(cfg.latent_dim, name="z_mean")
        self.to_logvar = keras.layers.Dense(cfg.latent_dim, name="z_logvar")
        self.decoder = keras.Sequential(
            [
                keras.layers.Dense(cfg.hidden_dim, activation="relu"),
                keras.layers.Dense(self._h0 * self._w0 * cfg.filters[-1], activation="relu"),
                keras.layers.Reshape((self._h0, self._w0, cfg.filters[-1])),
            ]
            + [
                keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu")
                for f in reversed(cfg.filters)
            ]
            + [keras.layers.Conv2D(c, 3, padding="same", name="logits")],
            name="decoder",
        )

    def build_model(self) -> None:
        # By shape, in the order an eager call on a (1, H, W, C) dummy creates them (same
        # variables, values, paths and build shapes), without running the network once:
        # its first-time eager kernels were most of a fresh process's build/load time.
        cfg: VAEConfig = self.cfg  # type: ignore[assignment]
        self.encoder.build((1, *self.image_shape))
        self.to_mean.build((1, cfg.hidden_dim))
        self.to_logvar.build((1, cfg.hidden_dim))
        self.decoder.build((1, cfg.latent_dim))
        self.built = True

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        mean, _ = self.encode(x, training=training)
        return tf.sigmoid(self.decode_logits(mean, training=training))

    def encode(self, x: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        hid = self.encoder(x, training=training)
        # Clip log-variance: exp() of a large value overflows and NaNs the KL early in training.
        return f32(self.to_mean(hid)), tf.clip_by_value(f32(self.to_logvar(hid)), -20.0, 10.0)

    def decode_logits(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        h, w, _ = self.image_shape
        return f32(self.decoder(z, training=training)[:, :h, :w, :])

    def _per_example_terms(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        mean, logvar = self.encode(x, training=training)
        # Stateless noise keyed by (step, replica): reproducible, resumable, and safe under
        # tf.distribute (a stateful generator would need a synchronized variable).
        eps = tf.random.stateless_normal(tf.shape(mean), seed=seed)
        z = mean + tf.exp(0.5 * logvar) * eps
        logits = self.decode_logits(z, training=training)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
        recon = tf.reduce_sum(bce, axis=[1, 2, 3])
        kl = -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mean) - tf.exp(logvar), axis=1)
        return recon, kl

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        cfg: VAEConfig = self.cfg  # type: ignore[assignment]
        ctx = tf.distribute.get_replica_context()
        seed = tf.stack([tf.cast(step, tf.int32), tf.cast(ctx.replica_id_in_sync_group, tf.int32)])
        warm = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / float(max(cfg.kl_warmup_steps, 1)))
        beta = cfg.kl_weight * (warm if cfg.kl_warmup_steps > 0 else 1.0)
        x = batch["image"]
        with tf.GradientTape() as tape:
            recon, kl = self._per_example_terms(x, seed, training=True)
            loss = tf.reduce_sum(recon + beta * kl) / global_batch_size
        norm = self.apply_gradients(optimizers["main"], tape, loss, self.trainable_variables)
        n = self.replicas()
        return {
            "loss": loss,
            "neg_elbo": tf.reduce_sum(recon + kl) / global_batch_size,
            "recon": tf.reduce_sum(recon) / global_batch_size,
            "kl": tf.reduce_sum(kl) / global_batch_size,
            "kl_beta": beta / n,
            # Per-replica norms are summed by the trainer; divide so the sum is the mean.
            "grad_norm": norm / n,
        }

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        recon, kl = self._per_example_terms(batch["image"], tf.constant([1234, 0]), training=False)
        return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        if kwargs:
            raise TypeError(f"VAE.generate got unexpected arguments {sorted(kwargs)}")
        z = np.random.default_rng(seed).standard_normal((n, self.cfg.latent_dim)).astype("float32")
        return self.decode(z)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return tf.sigmoid(self.decode_logits(tf.convert_to_tensor(z, tf.float32))).numpy()

    def report_images(self, x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        """Figures for the evaluation report: samples, reconstructions, latent interpolation."""
        x = x.astype("float32")
        mean, _ = self.encode(tf.convert_to_tensor(x[:16]))
        recon = self.decode(mean.numpy())
        # Interpolate between the codes of the first two test images, 10 steps.
        t = np.linspace(0.0, 1.0, 10, dtype="float32")[:, None]
        z = (1 - t) * mean.numpy()[0] + t * mean.numpy()[1]
        return {
            "samples": self.generate(64, seed=seed),
            "reconstructions": np.concatenate([x[:16], recon], axis=0),
            "interpolation": self.decode(z),
        }
