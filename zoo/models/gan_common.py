"""Building blocks shared by the GANs (DCGAN, WGAN-GP, conditional GAN).

Data convention: images in [0, 1] are mapped to [-1, 1] for the networks (the generator ends
in tanh); `generate` maps back to [0, 1]. No batch norm anywhere: the WGAN-GP penalty is
per-example (batch norm in the critic would couple examples), and without it sampling does
not depend on moving statistics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from zoo import config as cfgmod
from zoo.errors import ConfigError
from zoo.models.base import GenerativeModel, TrainConfig, f32


@dataclasses.dataclass
class GANConfig(TrainConfig):
    """Settings shared by the GANs (learning_rate applies to both networks)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-4
    latent_dim: int = 64
    # generator/discriminator widths (the generator mirrors them)
    filters: tuple[int, ...] = (32, 64)
    beta_1: float = 0.5
    beta_2: float = 0.999

    @classmethod
    def tiny(cls) -> GANConfig:
        return cls(epochs=1, batch_size=16, latent_dim=8, filters=(4, 8), steps_per_epoch=3)

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        cfgmod.require(self.latent_dim >= 1, f"{name}: latent_dim={self.latent_dim} must be >= 1")
        cfgmod.require(
            len(self.filters) >= 1 and all(f >= 1 for f in self.filters),
            f"{name}: filters={self.filters} must be one or more positive integers",
        )
        cfgmod.require(0 <= self.beta_1 < 1, f"{name}: beta_1={self.beta_1} must be in [0, 1)")
        cfgmod.require(0 <= self.beta_2 < 1, f"{name}: beta_2={self.beta_2} must be in [0, 1)")


def to_signed(x: tf.Tensor) -> tf.Tensor:
    return x * 2.0 - 1.0


class GANBase(GenerativeModel):
    """Generator + discriminator for [H, W, C] images; subclasses define the losses."""

    family = "image"
    primary_metric = "test_fid"
    lower_is_better = True

    def __init__(
        self, config: dict[str, Any] | GANConfig, data_spec: dict[str, Any], **kwargs: Any
    ):
        super().__init__(config, data_spec, **kwargs)
        cfg: GANConfig = self.cfg  # type: ignore[assignment]
        h, w, c = (int(v) for v in data_spec["shape"])
        self.image_shape = (h, w, c)
        self.num_classes = int(data_spec.get("num_classes") or 0)
        if self.conditional and self.num_classes < 2:
            raise ConfigError(
                f"{self.name_in_registry} needs a labelled dataset (num_classes >= 2), "
                f"got num_classes={data_spec.get('num_classes')!r}"
            )
        down = 2 ** len(cfg.filters)
        h0, w0 = math.ceil(h / down), math.ceil(w / down)
        act = "leaky_relu"
        # Generator: dense to a small map, transposed convs up, crop to (h, w): any size works.
        self.generator = keras.Sequential(
            [
                keras.layers.Dense(h0 * w0 * cfg.filters[-1] * 2, activation=act),
                keras.layers.Reshape((h0, w0, cfg.filters[-1] * 2)),
            ]
            + [
                keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same", activation=act)
                for f in reversed(cfg.filters)
            ]
            + [keras.layers.Conv2D(c, 3, padding="same", activation="tanh")],
            name="generator",
        )
        convs: list[keras.layers.Layer] = [
            keras.layers.Conv2D(f, 4, strides=2, padding="same", activation=act)
            for f in cfg.filters
        ]
        if not self.conditional:
            self.discriminator = keras.Sequential(
                convs + [keras.layers.Flatten(), keras.layers.Dense(1)], name="discriminator"
            )
        else:
            # Projection discriminator (Miyato & Koyama 2018): logit = w.f(x) + embed(y).f(x).
            # It learns the label dependence far sooner than feeding one-hot planes as input.
            self.discriminator = keras.Sequential(
                convs + [keras.layers.Flatten()], name="discriminator"
            )
            self.disc_head = keras.layers.Dense(1, name="disc_head")
            self.label_embed = keras.layers.Embedding(
                self.num_classes, h0 * w0 * cfg.filters[-1], name="label_embed"
            )

    # -- networks --
    def _one_hot(self, labels: tf.Tensor) -> tf.Tensor:
        return tf.one_hot(tf.cast(labels, tf.int32), self.num_classes)

    def gen(self, z: tf.Tensor, labels: tf.Tensor | None = None, training: bool = False):
        """Generator output in [-1, 1], cropped to the image shape."""
        if self.conditional:
            z = tf.concat([z, self._one_hot(labels)], axis=1)
        h, w, _ = self.image_shape
        return f32(self.generator(z, training=training)[:, :h, :w, :])

    def disc(self, x: tf.Tensor, labels: tf.Tensor | None = None, training: bool = False):
        """Discriminator/critic logit [B] for signed images (projection term when conditional)."""
        if not self.conditional:
            return f32(tf.squeeze(self.discriminator(x, training=training), axis=-1))
        feats = self.discriminator(x, training=training)
        proj = tf.reduce_sum(self.label_embed(tf.cast(labels, tf.int32)) * feats, axis=-1)
        return f32(tf.squeeze(self.disc_head(feats), axis=-1) + proj)

    @property
    def disc_variables(self) -> list:
        """Trainable variables of the discriminator/critic (incl. the projection parts)."""
        extra = [self.disc_head, self.label_embed] if self.conditional else []
        return [v for layer in [self.discriminator, *extra] for v in layer.trainable_variables]

    def build_model(self) -> None:
        # By shape, in the order `disc(gen(z, labels), labels)` on a batch of one creates them
        # (same variables, values, paths and build shapes), without running the networks: their
        # first-time eager kernels were most of a fresh process's build/load time.
        cfg: GANConfig = self.cfg  # type: ignore[assignment]
        self.generator.build((1, cfg.latent_dim + (self.num_classes if self.conditional else 0)))
        self.discriminator.build((1, *self.image_shape))
        if self.conditional:
            self.label_embed.build((1,))
            self.disc_head.build(self.discriminator.compute_output_shape((1, *self.image_shape)))
        self.built = True

    def call(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        labels = tf.zeros(tf.shape(z)[:1], tf.int64) if self.conditional else None
        return (self.gen(z, labels, training=training) + 1.0) / 2.0

    def make_optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        cfg: GANConfig = self.cfg  # type: ignore[assignment]
        return {
            name: keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2)
            for name in ("generator", "discriminator")
        }

    # -- helpers for train steps --
    @staticmethod
    def step_seed(step: tf.Tensor, salt: int) -> tf.Tensor:
        """Stateless noise seed keyed by (step, replica, salt): reproducible and resumable."""
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32) if ctx else tf.constant(0)
        return tf.stack([tf.cast(step, tf.int32) * 16 + salt, rid])

    def noise(self, batch: tf.Tensor, step: tf.Tensor, salt: int) -> tf.Tensor:
        return tf.random.stateless_normal(
            [tf.shape(batch)[0], self.cfg.latent_dim], seed=self.step_seed(step, salt)
        )

    def minimize(self, opt: Any, loss_fn: Any, variables: list) -> tf.Tensor:
        """Minimize `loss_fn()` over `variables`; returns the gradient global norm."""
        with tf.GradientTape() as tape:
            loss = loss_fn()
        return self.apply_gradients(opt, tape, loss, variables)

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Discriminator logit on held-out real images (a diagnostic; FID decides blessing)."""
        labels = batch["label"] if self.conditional else None
        return {"d_real_logit": self.disc(to_signed(batch["image"]), labels)}

    # -- sampling --
    def sample_labels(self, n: int, labels: Any = None) -> np.ndarray:
        """Labels for conditional sampling: given, or 0, 1, ..., K-1 repeated."""
        if labels is None:
            return np.arange(n, dtype=np.int64) % self.num_classes
        arr = np.asarray(labels, dtype=np.int64).reshape(-1)
        if arr.shape[0] != n or arr.min() < 0 or arr.max() >= self.num_classes:
            raise ConfigError(
                f"labels must be {n} integers in [0, {self.num_classes - 1}], got {arr.tolist()[:20]}"
            )
        return arr

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        labels = kwargs.pop("labels", None)
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}.generate got unexpected arguments {sorted(kwargs)}"
            )
        if labels is not None and not self.conditional:
            raise ConfigError(f"{self.name_in_registry} is unconditional: it takes no labels")
        z = np.random.default_rng(seed).standard_normal((n, self.cfg.latent_dim)).astype("float32")
        lab = tf.constant(self.sample_labels(n, labels)) if self.conditional else None
        out = []
        for i in range(0, n, 500):
            part = self.gen(tf.constant(z[i : i + 500]), None if lab is None else lab[i : i + 500])
            out.append(((part.numpy() + 1.0) / 2.0).clip(0.0, 1.0))
        return np.concatenate(out).astype("float32")

    def report_images(self, x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        if not self.conditional:
            return {"samples": self.generate(64, seed=seed)}
        # One row per class: rows of 16 samples of the same requested label.
        k = min(self.num_classes, 10)
        labels = np.repeat(np.arange(k), 16)
        return {
            "samples": self.generate(64, seed=seed),
            "by_label": self.generate(len(labels), seed=seed, labels=labels),
        }
