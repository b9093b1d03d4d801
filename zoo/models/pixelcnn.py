"""PixelCNN (van den Oord et al., 2016) with masked convolutions (type A first, then B).

Data handling (exact likelihood, stated once here): each pixel is an 8-bit value k in 0..255
(recovered as round(255 x) from the [0, 1] input) modelled by a 256-way categorical given the
pixels above and to the left (raster order); no dequantization, no binarization. Channels of
one pixel (C > 1) are conditionally independent given the previous pixels. `nll` is
-sum log p(k) in nats per image (natural log, summed over D = H*W*C) and
bits_per_dim = nll / (D ln 2); a uniform categorical scores exactly 8.
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
class PixelCNNConfig(TrainConfig):
    """PixelCNN settings (training settings are inherited from TrainConfig)."""

    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-3
    filters: int = 32
    layers: int = 5
    levels: int = 256

    @classmethod
    def tiny(cls) -> PixelCNNConfig:
        return cls(epochs=1, batch_size=16, filters=4, layers=1, steps_per_epoch=3)

    def validate(self) -> None:
        super().validate()
        r = cfgmod.require
        r(self.filters >= 1, f"PixelCNNConfig: filters={self.filters} must be >= 1")
        r(self.layers >= 0, f"PixelCNNConfig: layers={self.layers} must be >= 0")
        r(
            self.levels == 256,
            f"PixelCNNConfig: levels={self.levels}: only 8-bit (256) data is supported",
        )


@keras.saving.register_keras_serializable(package="genpipe")
class MaskedConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel sees only pixels above / left of the centre ("A"), or also it ("B")."""

    def __init__(self, *args: Any, mask_type: str = "B", **kwargs: Any):
        if mask_type not in ("A", "B"):
            raise ConfigError(f"mask_type={mask_type!r} is not A or B")
        kwargs.setdefault("padding", "same")
        super().__init__(*args, **kwargs)
        self.mask_type = mask_type

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        kh, kw = self.kernel_size
        m = np.ones((kh, kw, 1, 1), "float32")
        m[kh // 2, kw // 2 + (self.mask_type == "B") :] = 0.0
        m[kh // 2 + 1 :] = 0.0
        self.mask = tf.constant(m)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        out = self.convolution_op(inputs, self.kernel * tf.cast(self.mask, self.kernel.dtype))
        if self.use_bias:
            out = out + self.bias
        return self.activation(out) if self.activation is not None else out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mask_type": self.mask_type}


@keras.saving.register_keras_serializable(package="genpipe")
class PixelCNN(GenerativeModel):
    """Autoregressive 256-way categorical model of 8-bit pixels; samples in raster order."""

    name_in_registry = "pixelcnn"
    family = "image"
    config_cls = PixelCNNConfig
    primary_metric = "test_bits_per_dim"
    lower_is_better = True
    # Untrained: ~8 bits/dim (near-uniform categorical); a short MNIST run is well under 2.
    default_thresholds = {"test_bits_per_dim": ("max", 2.5)}
    #: sequential sampling costs H*W network passes: evaluate FID on fewer samples
    eval_samples = 200

    def __init__(
        self, config: dict[str, Any] | PixelCNNConfig, data_spec: dict[str, Any], **kwargs: Any
    ):
        super().__init__(config, data_spec, **kwargs)
        cfg: PixelCNNConfig = self.cfg  # type: ignore[assignment]
        h, w, c = (int(v) for v in data_spec["shape"])
        self.image_shape = (h, w, c)
        self.dims = h * w * c
        f = cfg.filters
        self.first = MaskedConv2D(f, 7, mask_type="A", activation="relu", name="conv_a")
        self.blocks = [
            MaskedConv2D(f, 3, mask_type="B", activation="relu", name=f"conv_b{i}")
            for i in range(cfg.layers)
        ]
        self.head = keras.Sequential(
            [
                keras.layers.Conv2D(2 * f, 1, activation="relu"),
                keras.layers.Conv2D(c * cfg.levels, 1),
            ],
            name="head",
        )

    def build_model(self) -> None:
        # By shape, in the order `logits` on a (1, H, W, C) dummy builds them (same variables,
        # values, paths, build shapes), without running the network's first-time eager kernels.
        features = (1, *self.image_shape[:2], self.cfg.filters)  # type: ignore[attr-defined]
        self.first.build((1, *self.image_shape))
        for block in self.blocks:
            block.build(features)
        self.head.build(features)
        self.built = True

    def features(self, x: tf.Tensor) -> tf.Tensor:
        """The masked stack's [B, H, W, F] features (each sees only the pixels before it)."""
        h = self.first(x * 2.0 - 1.0)
        for block in self.blocks:
            h = h + block(h)  # residual: keeps the B-masked stack trainable when deep
        return h

    def logits(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[B, H, W, C, 256] logits of each pixel given the pixels before it."""
        out = self.head(self.features(x), training=training)
        hh, ww, c = self.image_shape
        return f32(tf.reshape(out, [-1, hh, ww, c, self.cfg.levels]))

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.logits(x, training=training)

    def nll_nats(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        k = tf.cast(tf.round(x * 255.0), tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=k, logits=self.logits(x, training)
        )
        return tf.reduce_sum(ce, axis=[1, 2, 3])

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(self.nll_nats(batch["image"], training=True)) / global_batch_size
        norm = self.apply_gradients(optimizers["main"], tape, loss, self.trainable_variables)
        return {
            "loss": loss,
            "bits_per_dim": loss / (self.dims * math.log(2.0)),
            "grad_norm": norm / self.replicas(),
        }

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        nll = self.nll_nats(batch["image"])
        return {"nll": nll, "bits_per_dim": nll / (self.dims * math.log(2.0))}

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        if kwargs:
            raise TypeError(f"PixelCNN.generate got unexpected arguments {sorted(kwargs)}")
        return self._sample(tf.constant(n), tf.constant(seed)).numpy()

    @tf.function(reduce_retracing=True)
    def _sample(self, n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        h, w, c = self.image_shape
        x = tf.zeros(tf.stack([n, h, w, c]))
        for k in tf.range(h * w):
            i, j = k // w, k % w
            # The head is 1x1 convolutions: apply it at pixel (i, j) only, not at all H*W
            # (the 256-way output layer dominated sampling cost: ~10x faster this way).
            here = self.features(x)[:, i : i + 1, j : j + 1, :]
            flat = tf.reshape(self.head(here), [-1, self.cfg.levels])  # [n*C, 256]
            draw = tf.random.stateless_categorical(flat, 1, seed=tf.stack([seed, k]))
            vals = tf.reshape(tf.cast(draw, tf.float32) / 255.0, [-1, c])
            pos = tf.one_hot(k, h * w)  # write pixel (i, j) only
            x = x + tf.reshape(pos, [1, h, w, 1]) * vals[:, None, None, :]
        return x
