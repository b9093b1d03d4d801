"""Mini-GPT: a decoder-only transformer over characters (Radford et al. 2018; nanoGPT-style).

Token + learned position embeddings, `n_layer` pre-norm blocks (LayerNorm -> causal multi-head
self-attention -> residual; LayerNorm -> GELU MLP (4x) -> residual), a final LayerNorm and a
head that is optionally tied to the token embedding. The context (`nchars`) is the longest
prompt the model accepts; generation slides a window of the last `nchars` characters,
computed in NumPy from the weights (no TensorFlow call per character).
Character-level only (word/BPE tokenization is not implemented).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from zoo import blas
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
    #: steps of the cosine decay to `lr_floor` (0 = epochs x steps_per_epoch); a run ended
    #: by a time budget decays over the steps it surely makes, then stays at the floor
    decay_steps: int = 0
    #: the rate at the end of the cosine, as a share of learning_rate
    lr_floor: float = 0.1
    #: > 0: the cosine follows this process's CPU seconds (this many) instead of the steps
    #: (bench_quality's budgeted runs; 0 = by steps)
    budget_cpu_s: float = 0.0

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

    # -- generation, in NumPy from the weights: the window of the last `nchars` characters
    # is run through the blocks per generated character (a few [T, n_embd] products, well
    # under a millisecond), where a TensorFlow call per character cost ~3 ms plus a trace in
    # every fresh process (`genpipe generate`). The math is `logits` (checked against it in
    # tests/zoo/models/test_text_models.py); only the last position's logits are computed.
    def _np_weights(self) -> dict[str, Any]:
        def arr(v: Any) -> np.ndarray:
            return np.asarray(v, np.float32)

        def dense(layer: Any) -> tuple[np.ndarray, np.ndarray]:
            return arr(layer.kernel), arr(layer.bias)

        def norm(layer: Any) -> tuple[np.ndarray, np.ndarray]:
            return arr(layer.gamma), arr(layer.beta)

        tok = arr(self.tok_emb.embeddings)
        head = (tok.T, arr(self.head_bias)) if self.head is None else dense(self.head)
        blocks = [
            [norm(b.ln1), dense(b.attn.qkv), dense(b.attn.proj), norm(b.ln2)]
            + [dense(b.fc), dense(b.out)]
            for b in self.blocks
        ]
        return {"tok": tok, "pos": arr(self.pos_emb.embeddings), "blocks": blocks,
                "ln_f": norm(self.ln_f), "head": head}  # fmt: skip

    def _np_next_logits(self, w: dict[str, Any], ids: list[int]) -> np.ndarray:
        """Logits after the last of `ids` (at most `nchars` of them), as `logits` computes."""
        t = len(ids)
        heads = self.cfg.n_head  # type: ignore[attr-defined]
        h = w["tok"][np.asarray(ids)] + w["pos"][:t]
        future = np.triu(np.ones((t, t), bool), 1)
        for k, (ln1, (wq, bq), (wp, bp), ln2, (wf, bf), (wo, bo)) in enumerate(w["blocks"]):
            last = k == len(w["blocks"]) - 1  # the last block: only the last row is needed
            qkv = (_layer_norm(h, *ln1) @ wq + bq).reshape(t, 3, heads, -1).transpose(1, 2, 0, 3)
            q, kk, v = qkv[0], qkv[1], qkv[2]  # [H, T, hd]
            if last:
                q, mask = q[:, -1:], future[-1:]
                h = h[-1:]
            else:
                mask = future
            att = q @ kk.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            att = np.where(mask, np.float32(-1e9), att)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            y = (att @ v).transpose(1, 0, 2).reshape(h.shape[0], -1)
            h = h + y @ wp + bp
            h = h + _gelu(_layer_norm(h, *ln2) @ wf + bf) @ wo + bo
        head_w, head_b = w["head"]
        return (_layer_norm(h[-1:], *w["ln_f"]) @ head_w + head_b)[0]

    def _prime(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        state = (self._np_weights(), [int(i) for i in ids])
        return self._advance_np(state), state

    def _advance(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        state[1].append(int(token))
        return self._advance_np(state), state

    def _advance_np(self, state: Any) -> np.ndarray:
        # One BLAS thread: these [T, n_embd] products take ~0.15 ms on one, but OpenBLAS
        # splits them over all cores, and on a loaded machine its threads wait for each
        # other (5 ms each under load 6 on 2 cores: a 200-character sample took 6 s).
        with blas.one_thread():
            return self._np_next_logits(state[0], state[1][-self.context_length :])


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """keras LayerNormalization(epsilon=1e-5) over the last axis."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU x * Phi(x) (keras "gelu", approximate=False), with erf by Abramowitz &
    Stegun 7.1.26 (absolute error < 1.5e-7: far below float32 logits' tolerance)."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    return 0.5 * x * (1.0 + erf)
