"""The DDPM's noise-prediction U-Net (zoo.models.ddpm) and its blocks.

Registered Keras classes (package "genpipe"): a saved .keras file names them by class, not
module, so models saved while they lived in zoo/models/ddpm.py load unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from zoo.models.base import f32


def timestep_embedding(t: tf.Tensor, dim: int) -> tf.Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps (Transformer positional encoding)."""
    half = dim // 2
    freqs = tf.exp(-math.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
    args = tf.cast(t, tf.float32)[:, None] * freqs[None, :]
    return tf.concat([tf.sin(args), tf.cos(args)], axis=1)


@keras.saving.register_keras_serializable(package="genpipe")
class ResBlock(keras.layers.Layer):
    """GroupNorm-swish-conv, + the projected time embedding, GroupNorm-swish-conv, + the input
    (through a 1x1 conv where the width changes)."""

    def __init__(self, filters: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.filters = filters
        self.norm1: keras.layers.Layer | None = None  # in build: its groups divide the input
        self.conv1 = keras.layers.Conv2D(filters, 3, padding="same")
        self.t_proj = keras.layers.Dense(filters)
        self.norm2 = keras.layers.GroupNormalization(math.gcd(8, filters))
        self.conv2 = keras.layers.Conv2D(filters, 3, padding="same")
        self.skip: keras.layers.Layer | None = None

    def build(self, x_shape: Any, temb_shape: Any) -> None:
        # 8 groups where the width allows (4 channels each at 32), else a divisor of it.
        self.norm1 = keras.layers.GroupNormalization(math.gcd(8, int(x_shape[-1])))
        if x_shape[-1] != self.filters:
            self.skip = keras.layers.Conv2D(self.filters, 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters}

    def call(self, x: tf.Tensor, temb: tf.Tensor) -> tf.Tensor:
        assert self.norm1 is not None  # built
        h = self.conv1(keras.activations.swish(self.norm1(x)))
        h = h + self.t_proj(temb)[:, None, None, :]
        h = self.conv2(keras.activations.swish(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


@keras.saving.register_keras_serializable(package="genpipe")
class UNet(keras.layers.Layer):
    """A small U-Net: conv blocks with the time embedding added, skip connections by concat.

    `block="plain"`: two swish convs per block, the time embedding added after it (the
    original default; its weights' layout is unchanged). `block="res"`: ResBlock.
    """

    def __init__(
        self,
        channels: int,
        filters: tuple[int, ...],
        time_dim: int,
        block: str = "plain",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.channels, self.filters, self.time_dim = channels, tuple(filters), time_dim
        self.block = block
        if block == "res":
            self._build_res(channels, self.filters, time_dim)
            return
        self.t_mlp = keras.Sequential(
            [keras.layers.Dense(time_dim, activation="swish"), keras.layers.Dense(time_dim)]
        )
        self.stem = keras.layers.Conv2D(filters[0], 3, padding="same")
        self.down = []
        for i, f in enumerate(filters):
            self.down.append(self._block(f, f"down{i}"))
        self.t_proj = [keras.layers.Dense(f) for f in filters]
        self.pool = keras.layers.AveragePooling2D(2, padding="same")
        self.mid = self._block(filters[-1], "mid")
        self.up = [self._block(f, f"up{i}") for i, f in enumerate(filters)]
        self.t_proj_up = [keras.layers.Dense(f) for f in filters]
        self.out = keras.layers.Conv2D(channels, 3, padding="same")

    def _build_res(self, channels: int, filters: tuple[int, ...], time_dim: int) -> None:
        self.t_mlp = keras.Sequential(
            [keras.layers.Dense(time_dim, activation="swish"), keras.layers.Dense(time_dim)]
        )
        self.stem = keras.layers.Conv2D(filters[0], 3, padding="same")
        self.down = [ResBlock(f, name=f"down{i}") for i, f in enumerate(filters)]
        self.pool = keras.layers.AveragePooling2D(2, padding="same")
        self.mid = ResBlock(filters[-1], name="mid")
        self.up = [ResBlock(f, name=f"up{i}") for i, f in enumerate(filters)]
        self.out_norm = keras.layers.GroupNormalization(math.gcd(8, filters[0]))
        self.out = keras.layers.Conv2D(channels, 3, padding="same")

    @staticmethod
    def _block(f: int, name: str) -> keras.Sequential:
        return keras.Sequential(
            [
                keras.layers.Conv2D(f, 3, padding="same", activation="swish"),
                keras.layers.Conv2D(f, 3, padding="same", activation="swish"),
            ],
            name=name,
        )

    def _trackable_children(self, save_type: str = "checkpoint", **kwargs: Any) -> dict:
        """TensorFlow checkpoint children, plus the blocks held in lists.

        Keras 3 keeps list attributes in its own TrackedList, which tf.train.Checkpoint does
        not traverse: the blocks in `down`/`up`/`t_proj`/`t_proj_up` were missing from the
        trainer's checkpoints. The U-Net's trainable weights were still restored through the
        optimizer's references to them, but the EMA U-Net's were not (it has no optimizer):
        a model restored from a checkpoint (a resumed run, bench_quality's scoring) sampled
        with randomly initialised EMA blocks. The .keras format walks lists itself and is
        unaffected.
        """
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":
            for attr in ("down", "t_proj", "up", "t_proj_up"):
                for i, layer in enumerate(getattr(self, attr, ())):
                    children.setdefault(f"{attr}_item{i}", layer)
        return children

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "channels": self.channels,
            "filters": list(self.filters),
            "time_dim": self.time_dim,
            "block": self.block,
        }

    def call(self, x: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        if self.block == "res":
            return self._call_res(x, t)
        temb = self.t_mlp(timestep_embedding(t, self.time_dim))
        h = self.stem(x)
        skips, shapes = [], []
        for i, block in enumerate(self.down):
            h = block(h) + self.t_proj[i](temb)[:, None, None, :]
            skips.append(h)
            shapes.append(tf.shape(h))
            if i < len(self.down) - 1:
                h = self.pool(h)
        h = self.mid(h)
        for i in reversed(range(len(self.up))):
            if i < len(self.down) - 1:
                h = tf.image.resize(h, shapes[i][1:3], method="nearest")
            h = tf.concat([h, skips[i]], axis=-1)
            h = self.up[i](h) + self.t_proj_up[i](temb)[:, None, None, :]
        return f32(self.out(h))

    def _call_res(self, x: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        temb = self.t_mlp(timestep_embedding(t, self.time_dim))
        h = self.stem(x)
        skips, shapes = [], []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            skips.append(h)
            shapes.append(tf.shape(h))
            if i < len(self.down) - 1:
                h = self.pool(h)
        h = self.mid(h, temb)
        for i in reversed(range(len(self.up))):
            if i < len(self.down) - 1:
                h = tf.image.resize(h, shapes[i][1:3], method="nearest")
            h = self.up[i](tf.concat([h, skips[i]], axis=-1), temb)
        return f32(self.out(keras.activations.swish(self.out_norm(h))))
