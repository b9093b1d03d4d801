"""The published reference recipes of bench_quality.py, written from the keras-io examples.

Each recipe is rewritten from its description (architecture, optimizer, batch, loss); nothing
is copied. Every number carries its source in a comment: the keras-io example named in the
class docstring (https://keras.io/examples/generative/<name>/). Where the recipe cannot be
applied as published to 28x28 MNIST or to character-level text, the adaptation is stated
next to it (ADAPTED: ...).

A recipe is a `Ref`: `build()` returns the Keras model trained by plain `fit` (with the
recipe's own `train_step` where the example overrides it) and the `fit` input; the `Ref`
itself then quacks like a zoo model for the pipeline's scoring functions
(`zoo.train.evaluate_split`: `make_dataset` + `eval_batch`; `zoo.evaluation.image.
sample_metrics`: `generate(n, seed[, labels])`), so both sides are scored by the same code.

Over 400 lines: eight recipes, one per family, each next to the citations of its numbers.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from zoo.models.text_common import Codec, TextModel

KERAS_IO = "https://keras.io/examples/generative"


class Ref:
    """Base: one recipe, its model, its fit input, and the scoring interface."""

    name = ""
    source = ""
    family = "image"
    heldout_split = "test"
    conditional = False

    def __init__(self, data: Any, tiny: bool = False, seed: int = 0) -> None:
        self.data = data
        self.tiny = tiny
        self.seed = seed
        self.model: Any = None

    # -- what bench_quality calls --
    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        """(compiled model, fit input, extra fit kwargs such as batch_size)."""
        raise NotImplementedError

    def make_dataset(
        self,
        data: Any,
        split: str,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        from zoo.data import image_dataset

        return image_dataset(
            data, split, batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder
        )

    def after_fit(self) -> None:
        """Anything scoring needs once training is over (outside the budget)."""

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def _train_images(self) -> tuple[np.ndarray, np.ndarray]:
        from zoo.data import load_split_arrays

        return load_split_arrays(self.data, "train")


class BudgetStop(keras.callbacks.Callback):
    """Stops `fit` once the process has used `budget_s` CPU seconds (all threads) since
    training began: checked after every batch, so the overrun is at most one step."""

    def __init__(self, budget_s: float, clock: Any) -> None:
        super().__init__()
        self.budget_s = budget_s
        self.clock = clock
        self.t0 = 0.0
        self.steps = 0

    def on_train_begin(self, logs: Any = None) -> None:
        self.t0 = self.clock()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.steps += 1
        if self.clock() - self.t0 >= self.budget_s:
            self.model.stop_training = True


# ---------------------------------------------------------------------------------------
# VAE: keras-io "Variational AutoEncoder" (fchollet), examples/generative/vae.py
# ---------------------------------------------------------------------------------------
class _VAEModel(keras.Model):
    def __init__(self, encoder: keras.Model, decoder: keras.Model) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def terms(self, x: tf.Tensor, seed: Any = None) -> tuple[tf.Tensor, tf.Tensor]:
        mean, log_var = self.encoder(x)
        eps = (
            tf.random.normal(tf.shape(mean))
            if seed is None
            else tf.random.stateless_normal(tf.shape(mean), seed=seed)
        )
        z = mean + tf.exp(0.5 * log_var) * eps  # the recipe's Sampling layer
        recon = self.decoder(z)
        # vae.py: reconstruction loss = sum over the 28x28 pixels of binary_crossentropy
        # (Keras's, which clips probabilities at 1e-7), KL summed over the latent dims.
        rec = tf.reduce_sum(keras.losses.binary_crossentropy(x, recon), axis=(1, 2))
        kl = tf.reduce_sum(-0.5 * (1 + log_var - tf.square(mean) - tf.exp(log_var)), axis=1)
        return rec, kl

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x = data["image"] if isinstance(data, dict) else data
        with tf.GradientTape() as tape:
            rec, kl = self.terms(x)
            loss = tf.reduce_mean(rec) + tf.reduce_mean(kl)  # vae.py: total = recon + kl
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        return {"loss": loss}


class VAERef(Ref):
    """keras-io "Variational AutoEncoder" (fchollet, 2020): conv encoder/decoder on MNIST."""

    name = "vae"
    source = f"{KERAS_IO}/vae/"

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        latent = 2  # vae.py: latent_dim = 2
        enc_in = keras.Input((28, 28, 1))
        h = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(enc_in)  # vae.py
        h = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(h)  # vae.py
        h = layers.Flatten()(h)
        h = layers.Dense(16, activation="relu")(h)  # vae.py: Dense(16, relu)
        encoder = keras.Model(enc_in, [layers.Dense(latent)(h), layers.Dense(latent)(h)])
        dec_in = keras.Input((latent,))
        h = layers.Dense(7 * 7 * 64, activation="relu")(dec_in)  # vae.py
        h = layers.Reshape((7, 7, 64))(h)
        h = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(h)
        h = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(h)
        out = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(h)
        self.model = _VAEModel(encoder, keras.Model(dec_in, out))
        self.model.compile(optimizer=keras.optimizers.Adam())  # vae.py: Adam() defaults
        x, _ = self._train_images()
        # vae.py: mnist / 255 (grey levels, not binarized), fit(batch_size=128)
        return self.model, x.astype("float32") / 255.0, {"batch_size": 128, "shuffle": True}

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        rec, kl = self.model.terms(batch["image"], seed=tf.constant([1234, 0]))
        return {"neg_elbo": rec + kl}


# ---------------------------------------------------------------------------------------
# Conditional GAN: keras-io "Conditional GAN" (Sayak Paul), examples/generative/conditional_gan.py
# ---------------------------------------------------------------------------------------
def _label_maps(one_hot: tf.Tensor) -> tf.Tensor:
    """[B, K] one-hot -> [B, 28, 28, K] (the recipe repeats the labels over the image)."""
    return tf.tile(one_hot[:, None, None, :], [1, 28, 28, 1])


class _CGANModel(keras.Model):
    def __init__(self, disc: keras.Model, gen: keras.Model, latent: int) -> None:
        super().__init__()
        self.discriminator, self.generator, self.latent = disc, gen, latent
        # conditional_gan.py: BinaryCrossentropy(from_logits=True)
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True)

    def compile(self, d_opt: Any, g_opt: Any) -> None:  # type: ignore[override]
        super().compile()
        self.d_opt, self.g_opt = d_opt, g_opt

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        images, one_hot = data
        b = tf.shape(images)[0]
        maps = _label_maps(one_hot)
        z = tf.random.normal((b, self.latent))
        fake = self.generator(tf.concat([z, one_hot], axis=1))
        both = tf.concat([tf.concat([fake, maps], -1), tf.concat([images, maps], -1)], axis=0)
        # conditional_gan.py: fake -> 1, real -> 0
        labels = tf.concat([tf.ones((b, 1)), tf.zeros((b, 1))], axis=0)
        with tf.GradientTape() as tape:
            d_loss = self.bce(labels, self.discriminator(both))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_opt.apply_gradients(zip(grads, self.discriminator.trainable_weights, strict=True))
        z = tf.random.normal((b, self.latent))
        with tf.GradientTape() as tape:
            fake = self.generator(tf.concat([z, one_hot], axis=1))
            pred = self.discriminator(tf.concat([fake, maps], -1))
            g_loss = self.bce(tf.zeros((b, 1)), pred)  # "misleading labels": all real
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_opt.apply_gradients(zip(grads, self.generator.trainable_weights, strict=True))
        return {"d_loss": d_loss, "g_loss": g_loss}


class CGANRef(Ref):
    """keras-io "Conditional GAN" (Sayak Paul, 2021): one-hot labels concatenated to the
    generator's noise and, as 28x28 maps, to the discriminator's image channels."""

    name = "cgan"
    source = f"{KERAS_IO}/conditional_gan/"
    conditional = True

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        latent, k = 128, 10  # conditional_gan.py: latent_dim = 128, num_classes = 10
        w = 16 if self.tiny else 128
        disc = keras.Sequential(
            [
                keras.Input((28, 28, 1 + k)),
                layers.Conv2D(w // 2, 3, strides=2, padding="same"),  # 64 filters
                layers.LeakyReLU(0.2),
                layers.Conv2D(w, 3, strides=2, padding="same"),  # 128 filters
                layers.LeakyReLU(0.2),
                layers.GlobalMaxPooling2D(),
                layers.Dense(1),
            ]
        )
        gin = latent + k  # generator_in_channels = latent_dim + num_classes = 138
        gen = keras.Sequential(
            [
                keras.Input((gin,)),
                layers.Dense(7 * 7 * gin),
                layers.LeakyReLU(0.2),
                layers.Reshape((7, 7, gin)),
                layers.Conv2DTranspose(w, 4, strides=2, padding="same"),  # 128, 4x4, stride 2
                layers.LeakyReLU(0.2),
                layers.Conv2DTranspose(w, 4, strides=2, padding="same"),
                layers.LeakyReLU(0.2),
                layers.Conv2D(1, 7, padding="same", activation="sigmoid"),  # 7x7 sigmoid
            ]
        )
        self.model = _CGANModel(disc, gen, latent)
        # conditional_gan.py: Adam(learning_rate=0.0003) for both
        self.model.compile(keras.optimizers.Adam(3e-4), keras.optimizers.Adam(3e-4))
        x, y = self._train_images()
        data = (x.astype("float32") / 255.0, keras.utils.to_categorical(y, k).astype("float32"))
        # conditional_gan.py: batch_size = 64, images / 255, shuffled dataset
        ds = tf.data.Dataset.from_tensor_slices(data).shuffle(1024, seed=self.seed).batch(64)
        return self.model, ds, {}

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        labels = kwargs.pop("labels", None)
        lab = np.arange(n) % 10 if labels is None else np.asarray(labels)
        z = np.random.default_rng(seed).standard_normal((n, 128)).astype("float32")
        inp = np.concatenate([z, np.eye(10, dtype="float32")[lab]], axis=1)
        return np.asarray(self.model.generator.predict(inp, batch_size=500, verbose=0))


# ---------------------------------------------------------------------------------------
# WGAN-GP: keras-io "WGAN-GP overriding Model.train_step" (A_K_Nain), examples/generative/wgan_gp.py
# ---------------------------------------------------------------------------------------
class _WGANModel(keras.Model):
    def __init__(self, disc: keras.Model, gen: keras.Model, latent: int) -> None:
        super().__init__()
        self.discriminator, self.generator, self.latent = disc, gen, latent
        self.d_steps = 3  # wgan_gp.py: discriminator_extra_steps=3
        self.gp_weight = 10.0  # wgan_gp.py: gp_weight=10.0

    def compile(self, d_opt: Any, g_opt: Any) -> None:  # type: ignore[override]
        super().compile()
        self.d_opt, self.g_opt = d_opt, g_opt

    def _gp(self, real: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
        b = tf.shape(real)[0]
        # As published: alpha ~ N(0, 1) (the paper uses U[0, 1]); kept as in the recipe.
        alpha = tf.random.normal([b, 1, 1, 1], 0.0, 1.0)
        inter = real + alpha * (fake - real)
        with tf.GradientTape() as tape:
            tape.watch(inter)
            pred = self.discriminator(inter, training=True)
        g = tape.gradient(pred, [inter])[0]
        return tf.reduce_mean((tf.sqrt(tf.reduce_sum(tf.square(g), axis=[1, 2, 3])) - 1.0) ** 2)

    def train_step(self, real: Any) -> dict[str, tf.Tensor]:
        b = tf.shape(real)[0]
        for _ in range(self.d_steps):
            z = tf.random.normal((b, self.latent))
            with tf.GradientTape() as tape:
                fake = self.generator(z, training=True)
                d_cost = tf.reduce_mean(self.discriminator(fake, training=True)) - tf.reduce_mean(
                    self.discriminator(real, training=True)
                )
                d_loss = d_cost + self.gp_weight * self._gp(real, fake)
            grads = tape.gradient(d_loss, self.discriminator.trainable_variables)
            self.d_opt.apply_gradients(
                zip(grads, self.discriminator.trainable_variables, strict=True)
            )
        z = tf.random.normal((b, self.latent))
        with tf.GradientTape() as tape:
            g_loss = -tf.reduce_mean(
                self.discriminator(self.generator(z, training=True), training=True)
            )
        grads = tape.gradient(g_loss, self.generator.trainable_variables)
        self.g_opt.apply_gradients(zip(grads, self.generator.trainable_variables, strict=True))
        return {"d_loss": d_loss, "g_loss": g_loss}


class WGANGPRef(Ref):
    """keras-io "WGAN-GP overriding Model.train_step" (A_K_Nain, 2020); published on
    Fashion-MNIST 28x28, the same shape as MNIST."""

    name = "wgan_gp"
    source = f"{KERAS_IO}/wgan_gp/"

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        noise = 128  # wgan_gp.py: noise_dim = 128
        s = 8 if self.tiny else 1  # tiny: width / 8 (dry run only)

        def conv(x: Any, f: int, drop: bool) -> Any:
            # conv_block: Conv2D 5x5 stride 2, bias, no BN, LeakyReLU(0.2), Dropout(0.3)
            x = layers.Conv2D(f // s, 5, strides=2, padding="same")(x)
            x = layers.LeakyReLU(0.2)(x)
            return layers.Dropout(0.3)(x) if drop else x

        d_in = keras.Input((28, 28, 1))
        h = layers.ZeroPadding2D((2, 2))(d_in)  # pad to 32x32
        h = conv(h, 64, False)
        h = conv(h, 128, True)
        h = conv(h, 256, True)
        h = conv(h, 512, False)
        h = layers.Dropout(0.2)(layers.Flatten()(h))  # Flatten, Dropout(0.2), Dense(1)
        disc = keras.Model(d_in, layers.Dense(1)(h))

        def up(x: Any, f: int, act: Any) -> Any:
            # upsample_block: UpSampling2D(2), Conv2D 3x3 no bias, BatchNorm, activation
            x = layers.UpSampling2D(2)(x)
            x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
            return act(layers.BatchNormalization()(x))

        g_in = keras.Input((noise,))
        h = layers.Dense(4 * 4 * 256 // s, use_bias=False)(g_in)  # Dense(4*4*256), BN, LReLU
        h = layers.LeakyReLU(0.2)(layers.BatchNormalization()(h))
        h = layers.Reshape((4, 4, 256 // s))(h)
        h = up(h, 128 // s, layers.LeakyReLU(0.2))
        h = up(h, 64 // s, layers.LeakyReLU(0.2))
        h = up(h, 1, layers.Activation("tanh"))
        gen = keras.Model(g_in, layers.Cropping2D((2, 2))(h))  # 32x32 -> 28x28
        self.model = _WGANModel(disc, gen, noise)
        # wgan_gp.py: Adam(learning_rate=0.0002, beta_1=0.5, beta_2=0.9) for both
        self.model.compile(
            keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.9),
            keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.9),
        )
        x, _ = self._train_images()
        # wgan_gp.py: (x - 127.5) / 127.5, fit(batch_size=BATCH_SIZE = 512)
        return self.model, (x.astype("float32") - 127.5) / 127.5, {"batch_size": 512}

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal((n, 128)).astype("float32")
        out = np.asarray(self.model.generator.predict(z, batch_size=500, verbose=0))
        return ((out + 1.0) / 2.0).clip(0.0, 1.0)


# ---------------------------------------------------------------------------------------
# DDPM: keras-io "Denoising Diffusion Probabilistic Model" (A_K_Nain), examples/generative/ddpm.py
# ---------------------------------------------------------------------------------------
def _kinit(scale: float) -> Any:
    # ddpm.py: VarianceScaling(scale, mode="fan_avg", distribution="uniform")
    return keras.initializers.VarianceScaling(max(scale, 1e-10), "fan_avg", "uniform")


class _Attention(layers.Layer):
    """ddpm.py AttentionBlock: GroupNorm, q/k/v Dense over the channels, softmax over all
    positions, output projection initialized at 0, residual."""

    def __init__(self, units: int, groups: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.units = units
        self.norm = layers.GroupNormalization(groups=groups)
        self.q, self.k, self.v = (
            layers.Dense(units, kernel_initializer=_kinit(1.0)) for _ in "qkv"
        )
        self.proj = layers.Dense(units, kernel_initializer=_kinit(0.0))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        x = self.norm(x)
        q, k, v = self.q(x), self.k(x), self.v(x)
        s = tf.einsum("bhwc,bHWc->bhwHW", q, k) * float(self.units) ** -0.5
        s = tf.reshape(tf.nn.softmax(tf.reshape(s, [b, h, w, h * w]), -1), [b, h, w, h, w])
        return x + self.proj(tf.einsum("bhwHW,bHWc->bhwc", s, v))


class _TimeEmbedding(layers.Layer):
    def __init__(self, dim: int, **kw: Any) -> None:
        super().__init__(**kw)
        half = dim // 2
        self.freqs = tf.exp(tf.range(half, dtype=tf.float32) * -(math.log(10000) / (half - 1)))

    def call(self, t: tf.Tensor) -> tf.Tensor:
        e = tf.cast(t, tf.float32)[:, None] * self.freqs[None, :]
        return tf.concat([tf.sin(e), tf.cos(e)], axis=-1)


def _resblock(x: Any, temb: Any, width: int, groups: int) -> Any:
    """ddpm.py ResidualBlock: GN-swish-conv3x3, + Dense(swish(temb)), GN-swish-conv3x3
    (zero init), + residual (1x1 conv when the width changes)."""
    res = x if x.shape[-1] == width else layers.Conv2D(width, 1, kernel_initializer=_kinit(1.0))(x)
    t = layers.Dense(width, kernel_initializer=_kinit(1.0))(keras.activations.swish(temb))
    h = keras.activations.swish(layers.GroupNormalization(groups=groups)(x))
    h = layers.Conv2D(width, 3, padding="same", kernel_initializer=_kinit(1.0))(h)
    h = h + t[:, None, None, :]
    h = keras.activations.swish(layers.GroupNormalization(groups=groups)(h))
    h = layers.Conv2D(width, 3, padding="same", kernel_initializer=_kinit(0.0))(h)
    return h + res


def _ddpm_unet(size: int, first: int, mult: list[int], attn: list[bool], groups: int) -> Any:
    img = keras.Input((size, size, 1))
    tin = keras.Input((), dtype="int64")
    widths = [first * m for m in mult]
    x = layers.Conv2D(first, 3, padding="same", kernel_initializer=_kinit(1.0))(img)
    temb = _TimeEmbedding(first * 4)(tin)  # ddpm.py: TimeEmbedding(dim=first_conv_channels*4)
    temb = layers.Dense(first * 4, activation="swish", kernel_initializer=_kinit(1.0))(temb)
    temb = layers.Dense(first * 4, kernel_initializer=_kinit(1.0))(temb)  # TimeMLP
    skips = [x]
    for i, w in enumerate(widths):
        for _ in range(2):  # ddpm.py: num_res_blocks = 2
            x = _resblock(x, temb, w, groups)
            if attn[i]:
                x = _Attention(w, groups)(x)
            skips.append(x)
        if w != widths[-1]:
            x = layers.Conv2D(w, 3, strides=2, padding="same", kernel_initializer=_kinit(1.0))(x)
            skips.append(x)
    x = _resblock(x, temb, widths[-1], groups)
    x = _Attention(widths[-1], groups)(x)
    x = _resblock(x, temb, widths[-1], groups)
    for i in reversed(range(len(widths))):
        for _ in range(3):  # num_res_blocks + 1
            x = layers.Concatenate()([x, skips.pop()])
            x = _resblock(x, temb, widths[i], groups)
            if attn[i]:
                x = _Attention(widths[i], groups)(x)
        if i != 0:
            x = layers.UpSampling2D(2, interpolation="nearest")(x)
            x = layers.Conv2D(widths[i], 3, padding="same", kernel_initializer=_kinit(1.0))(x)
    x = keras.activations.swish(layers.GroupNormalization(groups=groups)(x))
    out = layers.Conv2D(1, 3, padding="same", kernel_initializer=_kinit(0.0))(x)
    return keras.Model([img, tin], out)


class _DiffusionModel(keras.Model):
    def __init__(self, net: keras.Model, ema_net: keras.Model, timesteps: int) -> None:
        super().__init__()
        self.network, self.ema_network, self.timesteps = net, ema_net, timesteps
        self.ema = 0.999  # ddpm.py: ema=0.999
        betas = np.linspace(1e-4, 0.02, timesteps)  # ddpm.py: linear 1e-4 .. 0.02, float64
        self.alpha_bar = np.cumprod(1.0 - betas)
        self.sqrt_ab = tf.constant(np.sqrt(self.alpha_bar), tf.float32)
        self.sqrt_1mab = tf.constant(np.sqrt(1.0 - self.alpha_bar), tf.float32)

    def train_step(self, images: Any) -> dict[str, tf.Tensor]:
        b = tf.shape(images)[0]
        t = tf.random.uniform((b,), 0, self.timesteps, dtype=tf.int64)  # t ~ U{0..T-1}
        with tf.GradientTape() as tape:
            noise = tf.random.normal(tf.shape(images))
            xt = (
                tf.gather(self.sqrt_ab, t)[:, None, None, None] * images
                + tf.gather(self.sqrt_1mab, t)[:, None, None, None] * noise
            )
            loss = self.loss(noise, self.network([xt, t], training=True))  # MSE
        grads = tape.gradient(loss, self.network.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.network.trainable_weights, strict=True))
        for w, e in zip(self.network.weights, self.ema_network.weights, strict=True):
            e.assign(self.ema * e + (1 - self.ema) * w)
        return {"loss": loss}


class DDPMRef(Ref):
    """keras-io "Denoising Diffusion Probabilistic Model" (A_K_Nain, 2022): a U-Net with
    GroupNorm, residual blocks and attention at the two lowest resolutions, EMA weights."""

    name = "ddpm"
    source = f"{KERAS_IO}/ddpm/"
    #: ADAPTED: the published sampler runs all 1000 ancestral steps. One forward pass of the
    #: published U-Net (63M parameters at 32x32) costs ~0.08 CPU-s per image here, so 1000
    #: steps x 250 FID images would be ~20,000 CPU-s; the same ancestral (posterior) sampler
    #: runs on this many evenly spaced steps of the schedule instead (~200 CPU-s).
    sample_steps = 10

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        first = 8 if self.tiny else 64  # ddpm.py: first_conv_channels = 64
        mult = [1, 2, 4, 8]  # ddpm.py: channel_multiplier = [1, 2, 4, 8]
        attn = [False, False, True, True]  # ddpm.py: has_attention
        if self.tiny:  # dry run: two levels (tracing the full graph alone takes ~60 CPU-s)
            mult, attn = [1, 2], [False, True]
        groups = 4 if self.tiny else 8  # ddpm.py: norm_groups = 8
        self.timesteps = 20 if self.tiny else 1000  # ddpm.py: total_timesteps = 1000
        # ADAPTED: published for 64x64; 28x28 does not halve three times, so images are
        # zero-padded (in [-1, 1]: padded with -1, black) to 32x32 and samples cropped.
        net = _ddpm_unet(32, first, mult, attn, groups)
        ema = _ddpm_unet(32, first, mult, attn, groups)
        ema.set_weights(net.get_weights())
        self.model = _DiffusionModel(net, ema, self.timesteps)
        # ddpm.py: Adam(learning_rate=2e-4), MeanSquaredError, jit_compile=False
        self.model.compile(
            loss=keras.losses.MeanSquaredError(),
            optimizer=keras.optimizers.Adam(2e-4),
            jit_compile=False,
        )
        x, _ = self._train_images()
        x = np.pad(
            x.astype("float32") / 127.5 - 1.0,
            ((0, 0), (2, 2), (2, 2), (0, 0)),
            constant_values=-1.0,
        )
        # ddpm.py: batch_size = 32, rescaled to [-1, 1]. Random left/right flips of the
        # flowers are left out: digits are not mirror-symmetric.
        return self.model, x, {"batch_size": 32, "shuffle": True}

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        steps = min(self.sample_steps, self.timesteps)
        ts = np.linspace(self.timesteps - 1, 0, steps).round().astype(int)
        ab = self.model.alpha_bar
        rng = np.random.default_rng(seed)
        net = tf.function(lambda x, t: self.model.ema_network([x, t], training=False))
        out = []
        for i in range(0, n, 250):
            m = min(250, n - i)
            x = rng.standard_normal((m, 32, 32, 1)).astype("float32")
            for k, t in enumerate(ts):
                ab_t = ab[t]
                ab_prev = ab[ts[k + 1]] if k + 1 < len(ts) else 1.0
                beta = 1.0 - ab_t / ab_prev  # the respaced step's beta
                eps = net(tf.constant(x), tf.fill([m], tf.constant(int(t), tf.int64))).numpy()
                # ddpm.py p_sample: x0 from the predicted noise, clipped to [-1, 1], then the
                # posterior mean; noise with the posterior variance except at the last step.
                x0 = np.clip((x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t), -1.0, 1.0)
                c1 = beta * math.sqrt(ab_prev) / (1 - ab_t)
                c2 = (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab_t)
                x = c1 * x0 + c2 * x
                if k + 1 < len(ts):
                    var = beta * (1 - ab_prev) / (1 - ab_t)
                    x = x + math.sqrt(var) * rng.standard_normal(x.shape).astype("float32")
            out.append(((x[:, 2:30, 2:30, :] + 1.0) / 2.0).clip(0.0, 1.0))
        return np.concatenate(out).astype("float32")


# ---------------------------------------------------------------------------------------
# RealNVP: keras-io "Density estimation using Real NVP" (Mandolini, Sanna, Zannini Quirini),
# examples/generative/real_nvp.py
# ---------------------------------------------------------------------------------------
class _RealNVPModel(keras.Model):
    def __init__(self, dims: int, hidden: int, couplings: int, mu: np.ndarray, sd: np.ndarray):
        super().__init__()
        self.dims = dims
        reg = keras.regularizers.l2(0.01)  # real_nvp.py: reg = 0.01

        def coupling() -> keras.Model:
            # real_nvp.py Coupling: t = 4 x Dense(output_dim, leaky_relu) + Dense(D, linear);
            # s = the same with a tanh output; every kernel L2-regularized.
            x = keras.Input((dims,))
            t = s = x
            for _ in range(4):
                t = layers.Dense(hidden, activation="leaky_relu", kernel_regularizer=reg)(t)
                s = layers.Dense(hidden, activation="leaky_relu", kernel_regularizer=reg)(s)
            t = layers.Dense(dims, kernel_regularizer=reg)(t)
            s = layers.Dense(dims, activation="tanh", kernel_regularizer=reg)(s)
            return keras.Model(x, [s, t])

        self.nets = [coupling() for _ in range(couplings)]
        # real_nvp.py: masks alternate between the two halves of the coordinates
        # ([[0, 1], [1, 0]] for 2-D data); ADAPTED to 784 coordinates: even / odd pixels.
        even = (np.arange(dims) % 2).astype("float32")
        self.masks = [even if i % 2 == 0 else 1.0 - even for i in range(couplings)]
        # real_nvp.py standardizes the data with a Normalization layer adapted on it
        self.mu = tf.constant(mu, tf.float32)
        self.sd = tf.constant(sd, tf.float32)
        self.log_sd_sum = float(np.log(sd).sum())

    def log_density(self, y: tf.Tensor) -> tf.Tensor:
        """log p(y) of dequantized pixels y in [0, 1)^D (flattened)."""
        x = (y - self.mu) / self.sd
        logdet = tf.zeros(tf.shape(x)[:1])
        # real_nvp.py call(training=True): data -> latent, the couplings in reverse order,
        # x = rm * (x - t) * exp(-s) + x_masked, log|det| -= sum(s)
        for i in reversed(range(len(self.nets))):
            m = self.masks[i]
            s, t = self.nets[i](x * m)
            s, t = s * (1 - m), t * (1 - m)
            x = (1 - m) * (x - t) * tf.exp(-s) + x * m
            logdet -= tf.reduce_sum(s, axis=1)
        base = tf.reduce_sum(-0.5 * tf.square(x) - 0.5 * math.log(2 * math.pi), axis=1)
        return base + logdet - self.log_sd_sum

    def train_step(self, y: Any) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            # real_nvp.py: loss = -mean(log-likelihood) (+ the layers' L2 penalties)
            loss = -tf.reduce_mean(self.log_density(y)) + tf.add_n(self.losses)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        return {"loss": loss}


def _dequantize(x01: tf.Tensor, seed: Any) -> tf.Tensor:
    """The pipeline's convention (zoo.models.realnvp): y = (k + u) / 256, u ~ U[0, 1)."""
    k = tf.round(x01 * 255.0)
    return (k + tf.random.stateless_uniform(tf.shape(k), seed=seed)) / 256.0


class RealNVPRef(Ref):
    """keras-io "Density estimation using Real NVP" (2020): published on 2-D "double moon"
    data; ADAPTED to flattened 28x28 images (784 coordinates), dequantized like ours so the
    8-bit bits/dim are comparable."""

    name = "realnvp"
    source = f"{KERAS_IO}/real_nvp/"

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        x, _ = self._train_images()
        k = x.reshape(len(x), -1)
        y0 = (
            k.astype("float32") + np.random.default_rng(self.seed).random(k.shape, "float32")
        ) / 256.0
        hidden = 16 if self.tiny else 256  # real_nvp.py: Coupling(output_dim=256)
        self.model = _RealNVPModel(k.shape[1], hidden, 6, y0.mean(0), y0.std(0))  # 6 couplings
        # real_nvp.py: Adam(learning_rate=0.0001); fit(batch_size=256)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-4))
        # Fresh dequantization noise in every batch (the recipe's data are continuous).
        ds = (
            tf.data.Dataset.from_tensor_slices(k)
            .shuffle(len(k), seed=self.seed)
            .batch(256)
            .map(lambda b: (tf.cast(b, tf.float32) + tf.random.uniform(tf.shape(b))) / 256.0)
            .prefetch(2)
        )
        return self.model, ds, {}

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x = batch["image"]
        y = tf.reshape(_dequantize(x, tf.constant([2024, 0])), [tf.shape(x)[0], -1])
        d = self.model.dims
        nll = -self.model.log_density(y) + d * math.log(256.0)
        return {"nll": nll, "bits_per_dim": nll / (d * math.log(2.0))}


# ---------------------------------------------------------------------------------------
# PixelCNN: keras-io "PixelCNN" (ADMoreau), examples/generative/pixelcnn.py
# ---------------------------------------------------------------------------------------
class _MaskedConv(layers.Layer):
    """pixelcnn.py PixelConvLayer: a Conv2D whose kernel is zeroed below the centre row and
    right of the centre (type "A" also zeroes the centre)."""

    def __init__(self, mask_type: str, filters: int, kernel: int, activation: Any, **kw: Any):
        super().__init__(**kw)
        self.conv = layers.Conv2D(filters, kernel, padding="same", activation=activation)
        self.mask_type, self.kernel = mask_type, kernel

    def build(self, shape: Any) -> None:
        self.conv.build(shape)
        m = np.zeros(self.conv.kernel.shape, "float32")
        c = self.kernel // 2
        m[:c, ...] = 1.0
        m[c, :c, ...] = 1.0
        if self.mask_type == "B":
            m[c, c, ...] = 1.0
        self.mask = tf.constant(m)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = tf.nn.conv2d(x, self.conv.kernel * self.mask, 1, "SAME") + self.conv.bias
        return self.conv.activation(y)


class PixelCNNRef(Ref):
    """keras-io "PixelCNN" (ADMoreau, 2020) on MNIST. ADAPTED: published on binarized
    pixels with a sigmoid output and binary cross-entropy; the pipeline's metric is bits/dim
    of the 8-bit pixels, so the input is the grey level and the last 1x1 layer outputs 256
    logits per pixel (categorical cross-entropy). Everything else as published."""

    name = "pixelcnn"
    source = f"{KERAS_IO}/pixelcnn/"

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        f = 8 if self.tiny else 128  # pixelcnn.py: filters=128
        blocks = 1 if self.tiny else 5  # pixelcnn.py: n_residual_blocks = 5
        inp = keras.Input((28, 28, 1))
        x = _MaskedConv("A", f, 7, "relu")(inp)  # mask "A", 7x7, relu
        for _ in range(blocks):
            # ResidualBlock: 1x1 conv (filters) -> masked "B" 3x3 (filters/2) -> 1x1 (filters), + x
            h = layers.Conv2D(f, 1, activation="relu")(x)
            h = _MaskedConv("B", f // 2, 3, "relu")(h)
            h = layers.Conv2D(f, 1, activation="relu")(h)
            x = layers.Add()([x, h])
        for _ in range(2):  # two masked "B" 1x1 layers, 128 filters, relu
            x = _MaskedConv("B", f, 1, "relu")(x)
        logits = layers.Reshape((28, 28, 1, 256))(layers.Conv2D(256, 1)(x))
        self.model = keras.Model(inp, logits)
        # pixelcnn.py: Adam(learning_rate=0.0005); fit(batch_size=128)
        self.model.compile(
            optimizer=keras.optimizers.Adam(5e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, _ = self._train_images()
        ds = (
            tf.data.Dataset.from_tensor_slices((x.astype("float32") / 255.0, x.astype("int32")))
            .shuffle(len(x), seed=self.seed)
            .batch(128)  # pixelcnn.py: batch_size=128
            .prefetch(2)
        )
        return self.model, ds, {}

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x = batch["image"]
        k = tf.cast(tf.round(x * 255.0), tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=k, logits=self.model(x))
        nll = tf.reduce_sum(ce, axis=[1, 2, 3])
        return {"nll": nll, "bits_per_dim": nll / (28 * 28 * math.log(2.0))}


# ---------------------------------------------------------------------------------------
# Text recipes: scored on the held-out windows of zoo.models.text_common (same function)
# ---------------------------------------------------------------------------------------
class _TextRef(Ref):
    family = "text"
    heldout_split = "val"
    nchars = 0
    # The held-out windows and the id encoding of the pipeline's text models (a Ref is not a
    # Keras model; these need only `nchars` and `codec`).
    make_dataset = TextModel.make_dataset  # type: ignore[assignment]
    _encoded_split = TextModel._encoded_split

    def window_length(self, training: bool) -> int:
        """The recipe's own window (its maxlen), also for the held-out windows: the recipe
        models read a fixed window (the LSTM's Input((maxlen, v)), the GPT's position table)."""
        return self.nchars

    def __init__(self, data: Any, tiny: bool = False, seed: int = 0) -> None:
        super().__init__(data, tiny, seed)
        from zoo.data import text_split
        from zoo.models.text_common import build_vocab

        # The vocabulary of the training split, as ours (plus <unk>, never trained on).
        self.codec = Codec(build_vocab(text_split(data, "train")))
        self.cfg = type("Cfg", (), {"nchars": self.nchars})()

    def _train_ids(self) -> np.ndarray:
        return self._encoded_split(self.data, "train")


class CharLSTMRef(_TextRef):
    """keras-io "Character-level text generation with LSTM" (fchollet, 2015/2020)."""

    name = "char_rnn"
    source = f"{KERAS_IO}/lstm_character_level_text_generation/"
    nchars = 40  # maxlen = 40

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        v = self.codec.size
        units = 16 if self.tiny else 128  # LSTM(128)
        self.model = keras.Sequential(
            [
                keras.Input((self.nchars, v)),
                layers.LSTM(units),
                layers.Dense(v, activation="softmax"),
            ]
        )
        # RMSprop(learning_rate=0.01), loss="categorical_crossentropy"
        self.model.compile(
            loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=0.01)
        )
        ids = self._train_ids()
        starts = np.arange(0, len(ids) - self.nchars, 3)  # step = 3
        const = tf.constant(ids)
        span = tf.range(self.nchars + 1, dtype=tf.int64)

        def one_hot(o: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            w = tf.gather(const, o[:, None] + span[None, :])
            return tf.one_hot(w[:, :-1], v), tf.one_hot(w[:, -1], v)

        # The recipe one-hot encodes all windows up front (bool arrays); 1M characters would
        # need ~0.9 GB that way, so the same windows are one-hot encoded per batch.
        ds = (
            tf.data.Dataset.from_tensor_slices(starts.astype("int64"))
            .shuffle(len(starts), seed=self.seed)
            .batch(128)  # batch_size = 128
            .map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(2)
        )
        return self.model, ds, {}

    def after_fit(self) -> None:
        # The trained LSTM read step by step: the same weights with return_sequences=True
        # give the next-character distribution after every prefix of the window.
        lstm, dense = self.model.layers
        seq = layers.LSTM(lstm.units, return_sequences=True)
        head = layers.Dense(self.codec.size, activation="softmax")
        inp = keras.Input((None, self.codec.size))
        self._seq = keras.Model(inp, head(seq(inp)))
        seq.set_weights(lstm.get_weights())
        head.set_weights(dense.get_weights())

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        p = self._seq(tf.one_hot(batch["x"], self.codec.size))
        nll = -tf.math.log(tf.maximum(tf.gather(p, batch["y"], batch_dims=2), 1e-7))
        return {"loss": tf.reduce_mean(nll, axis=1)}


class _Block(layers.Layer):
    """text_generation_with_miniature_gpt.py TransformerBlock: causal multi-head attention,
    dropout, post-LayerNorm residuals (epsilon 1e-6), a ReLU feed-forward."""

    def __init__(self, dim: int, heads: int, ff: int, rate: float = 0.1, **kw: Any) -> None:
        super().__init__(**kw)
        self.att = layers.MultiHeadAttention(heads, dim)  # key_dim = embed_dim
        self.ffn = keras.Sequential([layers.Dense(ff, activation="relu"), layers.Dense(dim)])
        self.ln1 = layers.LayerNormalization(epsilon=1e-6)
        self.ln2 = layers.LayerNormalization(epsilon=1e-6)
        self.d1, self.d2 = layers.Dropout(rate), layers.Dropout(rate)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        a = self.att(x, x, use_causal_mask=True)
        x = self.ln1(x + self.d1(a, training=training))
        return self.ln2(x + self.d2(self.ffn(x), training=training))


class _TokPos(layers.Layer):
    def __init__(self, maxlen: int, vocab: int, dim: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.tok = layers.Embedding(vocab, dim)
        self.pos = layers.Embedding(maxlen, dim)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.tok(x) + self.pos(tf.range(tf.shape(x)[-1]))


class MiniGPTRef(_TextRef):
    """keras-io "Text generation with a miniature GPT" (Apoorv Nandan, 2020). ADAPTED:
    published on IMDB words (vocabulary 20k); here the same network on characters."""

    name = "gpt"
    source = f"{KERAS_IO}/text_generation_with_miniature_gpt/"
    nchars = 80  # maxlen = 80

    def build(self) -> tuple[keras.Model, Any, dict[str, Any]]:
        dim = 16 if self.tiny else 256  # embed_dim = 256
        ff = 16 if self.tiny else 256  # feed_forward_dim = 256
        inp = keras.Input((self.nchars,), dtype="int32")
        x = _TokPos(self.nchars, self.codec.size, dim)(inp)
        x = _Block(dim, 2, ff)(x)  # num_heads = 2, one transformer block
        self.model = keras.Model(inp, layers.Dense(self.codec.size)(x))
        # compile("adam", loss=[SparseCategoricalCrossentropy(from_logits=True), None])
        self.model.compile(
            "adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        # batch_size = 128; random windows of the training text (the recipe's are IMDB lines)
        ds = (
            TextModel.make_dataset(self, self.data, "train", 128, shuffle=True, seed=self.seed)
            .repeat()
            .map(lambda b: (b["x"], b["y"]))
        )
        return self.model, ds, {"steps_per_epoch": 100}

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        logits = self.model(batch["x"], training=False)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["y"], logits=logits)
        return {"loss": tf.reduce_mean(nll, axis=1)}


REFS: dict[str, type[Ref]] = {
    r.name: r
    for r in (VAERef, CGANRef, WGANGPRef, DDPMRef, RealNVPRef, PixelCNNRef, CharLSTMRef, MiniGPTRef)
}
