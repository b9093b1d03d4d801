"""Mini-GPT: a decoder-only transformer over characters (Radford et al. 2018; nanoGPT-style).

Token + learned position embeddings, `n_layer` pre-norm blocks (LayerNorm -> causal multi-head
self-attention -> residual; LayerNorm -> GELU MLP (4x) -> residual), a final LayerNorm and a
head that is optionally tied to the token embedding. The context (`nchars`) is the longest
prompt the model accepts; generation slides a window of the last `nchars` characters.
Character-level only (word/BPE tokenization is not implemented).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from zoo import config as cfgmod
from zoo.models.base import TrainConfig, f32
from zoo.models.text_common import TextModel, text_config_checks


@dataclasses.dataclass
class GPTConfig(TrainConfig):
    """Mini-GPT settings; the defaults train in about 3 minutes on 2 CPU cores.

    Two blocks of width 128 at batch 12 (nanoGPT's CPU shakespeare-char batch): at a fixed
    CPU budget twice the steps of four blocks beat the depth (bench/README.md, "Quality per
    CPU-minute": 100 CPU-s gave 1.98 nats/char against 2.19 for 4 blocks at batch 24).
    """

    epochs: int = 4
    batch_size: int = 12
    learning_rate: float = 2e-3
    steps_per_epoch: int = 600
    #: context length in characters (training window and longest prompt)
    nchars: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    tie_weights: bool = True
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    warmup_steps: int = 50
    cosine_decay: bool = True

    @classmethod
    def tiny(cls) -> GPTConfig:
        return cls(
            epochs=1,
            batch_size=8,
            steps_per_epoch=3,
            nchars=16,
            n_layer=1,
            n_head=2,
            n_embd=16,
            warmup_steps=0,
            learning_rate=3e-3,
        )

    def validate(self) -> None:
        super().validate()
        text_config_checks(self, "GPTConfig")
        for k in ("n_layer", "n_head", "n_embd"):
            cfgmod.require(getattr(self, k) >= 1, f"GPTConfig: {k}={getattr(self, k)} must be >= 1")
        cfgmod.require(
            self.n_embd % self.n_head == 0,
            f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}",
        )
        cfgmod.require(self.warmup_steps >= 0, "GPTConfig: warmup_steps must be >= 0")
        cfgmod.require(self.weight_decay >= 0, "GPTConfig: weight_decay must be >= 0")


class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention where position t attends to positions <= t only."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.qkv = keras.layers.Dense(3 * n_embd, name="qkv")
        self.proj = keras.layers.Dense(n_embd, name="proj")
        self.attn_drop = keras.layers.Dropout(dropout)
        self.resid_drop = keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(x), [b, t, 3, self.n_head, self.head_dim])
        q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # each [B, H, T, hd]
        # Scores and softmax in float32 (under mixed precision too: exp overflows float16).
        att = f32(tf.matmul(q, k, transpose_b=True)) / math.sqrt(self.head_dim)
        # The causal mask: -inf above the diagonal, so the future gets zero weight.
        allowed = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0)
        att = tf.where(allowed, att, tf.constant(-1e9, att.dtype))
        att = tf.cast(tf.nn.softmax(att, axis=-1), v.dtype)
        att = self.attn_drop(att, training=training)
        y = tf.reshape(tf.transpose(tf.matmul(att, v), [0, 2, 1, 3]), [b, t, -1])
        return self.resid_drop(self.proj(y), training=training)


class Block(keras.layers.Layer):
    """Pre-norm transformer block."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-5, name="ln1")
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, name="attn")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-5, name="ln2")
        self.fc = keras.layers.Dense(4 * n_embd, activation="gelu", name="fc")
        self.out = keras.layers.Dense(n_embd, name="out")
        self.drop = keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = x + self.attn(self.ln1(x), training=training)
        return x + self.drop(self.out(self.fc(self.ln2(x))), training=training)


@keras.saving.register_keras_serializable(package="genpipe")
class GPT(TextModel):
    """Character-level mini-GPT; `generate(prompt, max_new_tokens, temperature, top_k, seed)`."""

    name_in_registry = "gpt"
    config_cls = GPTConfig

    def __init__(
        self, config: dict[str, Any] | GPTConfig, data_spec: dict[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(config, data_spec, **kwargs)
        cfg: GPTConfig = self.cfg  # type: ignore[assignment]
        v = self.codec.size
        self.tok_emb = keras.layers.Embedding(
            v, cfg.n_embd, embeddings_initializer=keras.initializers.RandomNormal(0.0, 0.02)
        )
        self.pos_emb = keras.layers.Embedding(
            cfg.nchars,
            cfg.n_embd,
            embeddings_initializer=keras.initializers.RandomNormal(0.0, 0.02),
        )
        self.emb_drop = keras.layers.Dropout(cfg.dropout)
        self.blocks = [
            Block(cfg.n_embd, cfg.n_head, cfg.dropout, name=f"block_{i}")
            for i in range(cfg.n_layer)
        ]
        self.ln_f = keras.layers.LayerNormalization(epsilon=1e-5, name="ln_f")
        # Tied: logits = h @ E^T + b (the bias is the only extra weight of the head).
        self.head = None if cfg.tie_weights else keras.layers.Dense(v, name="head")
        if cfg.tie_weights:
            self.head_bias = self.add_weight(shape=(v,), initializer="zeros", name="head_bias")
        self._next_fn: Any = None

    def build_model(self) -> None:
        self.logits(tf.zeros((1, self.cfg.nchars), tf.int32))  # type: ignore[attr-defined]
        self.built = True

    @property
    def context_length(self) -> int:
        return int(self.cfg.nchars)  # type: ignore[attr-defined]

    def logits(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        t = tf.shape(x)[1]
        h = self.tok_emb(x) + self.pos_emb(tf.range(t))[None]
        h = self.emb_drop(h, training=training)
        for block in self.blocks:
            h = block(h, training=training)
        h = self.ln_f(h)
        if self.head is not None:
            return f32(self.head(h))
        emb = tf.cast(self.tok_emb.embeddings, h.dtype)  # float16 under mixed precision
        return f32(tf.matmul(h, emb, transpose_b=True)) + self.head_bias

    # -- generation: one fixed-shape window, so the step function is traced once. Causality
    # makes the padding to the right of the last real character irrelevant to its logits.
    def _next_logits(self, window: np.ndarray, last: int) -> np.ndarray:
        if self._next_fn is None:

            @tf.function(
                input_signature=[
                    tf.TensorSpec([1, self.context_length], tf.int32),
                    tf.TensorSpec([], tf.int32),
                ]
            )
            def fn(w: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
                return self.logits(w, training=False)[0, i]

            self._next_fn = fn
        return self._next_fn(tf.constant(window[None]), tf.constant(last, tf.int32)).numpy()

    def _prime(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        history = [int(i) for i in ids]
        return self._advance_history(history), history

    def _advance(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        state.append(token)
        return self._advance_history(state), state

    def _advance_history(self, history: list[int]) -> np.ndarray:
        ctx = history[-self.context_length :]
        window = np.zeros(self.context_length, np.int32)
        window[: len(ctx)] = ctx
        return self._next_logits(window, len(ctx) - 1)
