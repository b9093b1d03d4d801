"""char-RNN: a multi-layer GRU or LSTM predicting the next character (Karpathy's char-rnn).

Embedding -> `n_layers` recurrent layers of `width` units -> dense logits over the
vocabulary, trained on windows of `nchars` characters. Generation is stateful: the prompt
is read once to prime the recurrent state, then each generated character advances it by one
step. `nchars` is also the longest prompt accepted (the length the model was trained on).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from zoo import config as cfgmod
from zoo.models.base import TrainConfig
from zoo.models.text_common import TextModel, text_config_checks


@dataclasses.dataclass
class CharRNNConfig(TrainConfig):
    """char-RNN settings; the defaults train in about 2 minutes on 2 CPU cores.

    One 256-unit GRU layer at batch 16 and lr 8e-3: at a fixed CPU budget, many small steps
    of a cheap model beat few of a deep one (bench/README.md, "Quality per CPU-minute":
    100 CPU-s gave 1.69 nats/char against 1.84 for the former 2x256 GRU at batch 32, 3e-3).
    """

    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 8e-3
    steps_per_epoch: int = 500
    #: training window in characters (and the longest prompt accepted)
    nchars: int = 64
    cell: str = "gru"
    n_layers: int = 1
    width: int = 256
    embedding_dim: int = 64
    dropout: float = 0.0
    clip_norm: float = 1.0
    warmup_steps: int = 0
    cosine_decay: bool = True

    @classmethod
    def tiny(cls) -> CharRNNConfig:
        return cls(
            epochs=1,
            batch_size=8,
            steps_per_epoch=3,
            nchars=16,
            n_layers=1,
            width=16,
            embedding_dim=8,
        )

    def validate(self) -> None:
        super().validate()
        text_config_checks(self, "CharRNNConfig")
        cfgmod.require(
            self.cell in ("gru", "lstm"),
            f"CharRNNConfig: cell={self.cell!r} is not one of gru, lstm",
        )
        for k in ("n_layers", "width", "embedding_dim"):
            cfgmod.require(
                getattr(self, k) >= 1, f"CharRNNConfig: {k}={getattr(self, k)} must be >= 1"
            )


@keras.saving.register_keras_serializable(package="genpipe")
class CharRNN(TextModel):
    """Character-level GRU/LSTM; `generate(prompt, max_new_tokens, temperature, top_k, seed)`."""

    name_in_registry = "char_rnn"
    config_cls = CharRNNConfig

    def __init__(
        self, config: dict[str, Any] | CharRNNConfig, data_spec: dict[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(config, data_spec, **kwargs)
        cfg: CharRNNConfig = self.cfg  # type: ignore[assignment]
        self.embed = keras.layers.Embedding(self.codec.size, cfg.embedding_dim, name="embed")
        layer = keras.layers.GRU if cfg.cell == "gru" else keras.layers.LSTM
        self.rnns = [
            layer(cfg.width, return_sequences=True, return_state=True, name=f"rnn_{i}")
            for i in range(cfg.n_layers)
        ]
        self.drop = keras.layers.Dropout(cfg.dropout)
        self.head = keras.layers.Dense(self.codec.size, name="head")
        self._step_fn: Any = None

    def build_model(self) -> None:
        self.logits(tf.zeros((1, self.cfg.nchars), tf.int32))  # type: ignore[attr-defined]
        self.built = True

    @property
    def context_length(self) -> int:
        return int(self.cfg.nchars)  # type: ignore[attr-defined]

    def _run(
        self, x: tf.Tensor, states: list[Any] | None, training: bool
    ) -> tuple[tf.Tensor, list[Any]]:
        h = self.embed(x)
        new_states = []
        for i, rnn in enumerate(self.rnns):
            init = None if states is None else states[i]
            out = rnn(h, initial_state=init, training=training)
            h, st = out[0], list(out[1:])
            new_states.append(st)
            h = self.drop(h, training=training)
        return self.head(h), new_states

    def logits(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self._run(x, None, training)[0]

    # -- stateful generation: state = per layer [h] (GRU) or [h, c] (LSTM), numpy [1, width]
    def _zero_state(self) -> list[list[np.ndarray]]:
        k = 1 if self.cfg.cell == "gru" else 2  # type: ignore[attr-defined]
        w = self.cfg.width  # type: ignore[attr-defined]
        return [[np.zeros((1, w), np.float32) for _ in range(k)] for _ in self.rnns]

    def _step(self, ids: np.ndarray, state: list[list[np.ndarray]]) -> tuple[np.ndarray, Any]:
        if self._step_fn is None:
            # Variable-length input: one trace for priming with any prompt and for 1-char steps.
            @tf.function(reduce_retracing=True)
            def fn(x: tf.Tensor, st: list[list[tf.Tensor]]) -> tuple[tf.Tensor, Any]:
                logits, new = self._run(x, st, training=False)
                return logits[0, -1], new

            self._step_fn = fn
        logits, new = self._step_fn(tf.constant(ids[None], tf.int32), state)
        return logits.numpy(), [[s.numpy() for s in layer] for layer in new]

    def _prime(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._step(np.asarray(ids, np.int32), self._zero_state())

    def _advance(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        return self._step(np.array([token], np.int32), state)
