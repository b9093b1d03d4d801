"""DCGAN (Radford et al., 2016) with the non-saturating GAN loss (Goodfellow et al., 2014).

    D loss = softplus(-D(x)) + softplus(D(G(z)))      (= BCE with real=1, fake=0)
    G loss = softplus(-D(G(z)))                       (non-saturating: -log sigmoid(D(G(z))))

One discriminator step then one generator step per global step; losses and both networks'
gradient norms are logged. Held-out quality is FID (zoo.evaluation.image).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from zoo.models.gan_common import GANBase, GANConfig, to_signed


@dataclasses.dataclass
class DCGANConfig(GANConfig):
    """DCGAN settings (all shared GAN settings; see GANConfig)."""


@keras.saving.register_keras_serializable(package="genpipe")
class DCGAN(GANBase):
    """Unconditional DCGAN; `generate(n, seed)` maps z ~ N(0, I) through the generator."""

    name_in_registry = "dcgan"
    config_cls = DCGANConfig
    # FID in our MNIST feature space: noise/untrained ~ 300+, a useful GAN well under 50.
    default_thresholds = {"test_fid": ("max", 60.0)}

    def gan_losses(
        self, x: tf.Tensor, labels: Any, step: tf.Tensor, optimizers: dict[str, Any], gbs: int
    ) -> dict[str, tf.Tensor]:
        d_vars = self.disc_variables
        g_vars = self.generator.trainable_variables
        real = to_signed(x)
        z = self.noise(x, step, 0)
        out: dict[str, tf.Tensor] = {}

        def d_loss() -> tf.Tensor:
            fake = self.gen(z, labels, training=True)
            lr = self.disc(real, labels, training=True)
            lf = self.disc(fake, labels, training=True)
            out["d_real"] = tf.reduce_sum(tf.sigmoid(lr)) / gbs
            out["d_fake"] = tf.reduce_sum(tf.sigmoid(lf)) / gbs
            out["d_loss"] = tf.reduce_sum(tf.nn.softplus(-lr) + tf.nn.softplus(lf)) / gbs
            return out["d_loss"]

        out["d_grad_norm"] = self.minimize(optimizers["discriminator"], d_loss, d_vars)
        z2 = self.noise(x, step, 1)

        def g_loss() -> tf.Tensor:
            lf = self.disc(self.gen(z2, labels, training=True), labels, training=True)
            out["g_loss"] = tf.reduce_sum(tf.nn.softplus(-lf)) / gbs
            return out["g_loss"]

        out["g_grad_norm"] = self.minimize(optimizers["generator"], g_loss, g_vars)
        return out

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        labels = batch["label"] if self.conditional else None
        out = self.gan_losses(batch["image"], labels, step, optimizers, global_batch_size)
        n = self.replicas()
        dn, gn = out.pop("d_grad_norm"), out.pop("g_grad_norm")
        return {
            **out,
            "loss": out["d_loss"] + out["g_loss"],
            # Per-replica norms are summed by the trainer; divide so the sum is the mean.
            "d_grad_norm": dn / n,
            "g_grad_norm": gn / n,
            "grad_norm": tf.sqrt(dn**2 + gn**2) / n,
        }
