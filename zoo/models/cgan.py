"""Conditional GAN (Mirza & Osindero, 2014) on DCGAN networks with the non-saturating loss.

The generator takes [z, one_hot(label)]; the discriminator is a projection discriminator
(Miyato & Koyama, 2018): logit = w.f(x) + embed(y).f(x). `generate(n, seed, labels=...)` samples the requested
classes (default 0, 1, ..., K-1 repeated). Evaluation adds the accuracy of the domain
classifier on generated samples per requested label (zoo.evaluation.image).
"""

from __future__ import annotations

import dataclasses

import keras

from zoo.models.dcgan import DCGAN
from zoo.models.gan_common import GANConfig


@dataclasses.dataclass
class CGANConfig(GANConfig):
    """Conditional GAN settings (all shared GAN settings; see GANConfig)."""


@keras.saving.register_keras_serializable(package="genpipe")
class CGAN(DCGAN):
    """Class-conditional DCGAN; needs a labelled dataset."""

    name_in_registry = "cgan"
    config_cls = CGANConfig
    conditional = True
    default_thresholds = {"test_fid": ("max", 60.0), "test_cond_accuracy": ("min", 0.5)}
