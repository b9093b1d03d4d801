"""WGAN-GP (Gulrajani et al., 2017): Wasserstein critic with a gradient penalty.

Per global step: `n_critic` critic steps, then one generator step.
    critic loss = D(G(z)) - D(x) + gp_weight * (||grad D(x_hat)||_2 - 1)^2
    x_hat = eps * x + (1 - eps) * G(z),   eps ~ U(0, 1) per example (uniform interpolation)
    generator loss = -D(G(z))
The norm is sqrt(sum g^2 + 1e-12): finite gradient even where g = 0 (plain sqrt has an
infinite derivative at 0). The critic reuses the step's real batch with fresh noise for each
of its steps. Critic/generator losses, the penalty and both gradient norms are logged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from zoo import config as cfgmod
from zoo.models.gan_common import GANBase, GANConfig, to_signed


@dataclasses.dataclass
class WGANGPConfig(GANConfig):
    """WGAN-GP settings: Adam(1e-4, 0.5, 0.9) as in the paper, n_critic critic steps."""

    learning_rate: float = 2e-4
    beta_1: float = 0.5
    beta_2: float = 0.9
    n_critic: int = 3
    gp_weight: float = 10.0

    @classmethod
    def tiny(cls) -> WGANGPConfig:
        return cls(
            epochs=1, batch_size=16, latent_dim=8, filters=(4, 8), steps_per_epoch=3, n_critic=2
        )

    def validate(self) -> None:
        super().validate()
        cfgmod.require(self.n_critic >= 1, f"WGANGPConfig: n_critic={self.n_critic} must be >= 1")
        cfgmod.require(
            self.gp_weight >= 0, f"WGANGPConfig: gp_weight={self.gp_weight} must be >= 0"
        )


@keras.saving.register_keras_serializable(package="genpipe")
class WGANGP(GANBase):
    """Unconditional WGAN-GP on the shared DCGAN-style networks (no batch norm in the critic)."""

    name_in_registry = "wgan_gp"
    config_cls = WGANGPConfig
    default_thresholds = {"test_fid": ("max", 60.0)}

    def gradient_penalty(self, real: tf.Tensor, fake: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Per-example (||grad D(x_hat)|| - 1)^2 at uniform interpolates [B]."""
        eps = tf.random.stateless_uniform([tf.shape(real)[0], 1, 1, 1], seed=seed)
        x_hat = eps * real + (1.0 - eps) * fake
        with tf.GradientTape() as tape:
            tape.watch(x_hat)
            score = self.disc(x_hat, training=True)
        g = tape.gradient(score, x_hat)
        norm = tf.sqrt(tf.reduce_sum(tf.square(g), axis=[1, 2, 3]) + 1e-12)
        return tf.square(norm - 1.0)

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        cfg: WGANGPConfig = self.cfg  # type: ignore[assignment]
        gbs = global_batch_size
        real = to_signed(batch["image"])
        d_vars = self.disc_variables
        g_vars = self.generator.trainable_variables
        out: dict[str, tf.Tensor] = {}
        d_norms = []
        for i in range(cfg.n_critic):  # unrolled: n_critic is a small constant
            z = self.noise(real, step, 2 * i)
            gp_seed = self.step_seed(step, 2 * i + 1)

            def d_loss(z: tf.Tensor = z, gp_seed: tf.Tensor = gp_seed) -> tf.Tensor:
                fake = self.gen(z, training=True)
                w = self.disc(fake, training=True) - self.disc(real, training=True)
                gp = self.gradient_penalty(real, fake, gp_seed)
                out["wasserstein"] = -tf.reduce_sum(w) / gbs
                out["gp"] = tf.reduce_sum(gp) / gbs
                out["d_loss"] = tf.reduce_sum(w + cfg.gp_weight * gp) / gbs
                return out["d_loss"]

            d_norms.append(self.minimize(optimizers["discriminator"], d_loss, d_vars))
        z = self.noise(real, step, 15)

        def g_loss() -> tf.Tensor:
            out["g_loss"] = (
                -tf.reduce_sum(self.disc(self.gen(z, training=True), training=True)) / gbs
            )
            return out["g_loss"]

        gn = self.minimize(optimizers["generator"], g_loss, g_vars)
        dn = tf.reduce_max(tf.stack(d_norms))
        n = self.replicas()
        return {
            **out,
            "loss": out["d_loss"] + out["g_loss"],
            # Per-replica norms are summed by the trainer; divide so the sum is the mean.
            "d_grad_norm": dn / n,
            "g_grad_norm": gn / n,
            "grad_norm": tf.sqrt(dn**2 + gn**2) / n,
        }
