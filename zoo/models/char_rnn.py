"""char-RNN: a multi-layer GRU or LSTM predicting the next character (Karpathy's char-rnn).

Embedding -> `n_layers` recurrent layers of `width` units -> dense logits over the
vocabulary, trained on windows of `nchars` characters. Generation is stateful: the prompt
is read once to prime the recurrent state, then each generated character advances it by one
step, computed in NumPy from the weights (no TensorFlow call per character). `nchars` is
the length of the windows it trains on; `context` (longer) is the longest prompt accepted and
the length of the held-out windows it is scored on: the state carries any length, and every
window starts from a zero state, whose first characters are guessed almost blind.
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

    One 256-unit GRU layer at batch 24 and lr 1e-2: at a fixed CPU budget, many small steps
    of a cheap model beat few of a deep one (bench/README.md, "Quality per CPU-minute":
    100 CPU-s gave 1.69 nats/char against 1.84 for the former 2x256 GRU at batch 32, 3e-3).
    Batch 24 over 16 (lr 1e-2 over 8e-3) once ~2,400 steps fit in the budget: 1.538 / 1.538
    against 1.546 / 1.553 (2026-12-02; on a machine where ~1,500 fitted, 1.61 against 1.62,
    within the spread); per step, an LSTM, XLA and bfloat16 cost more and an unrolled loop
    less per step but more in tracing. `context` 256, not 64: the same
    trained model scores 0.028 nats/char lower over 256-character held-out windows than over
    64-character ones (0.019 at 128, 0.032 at 512), since each window starts from a zero
    state and its first characters cost 2.5, 2.2, 2.0, ... nats against ~1.64 later on.
    """

    epochs: int = 4
    batch_size: int = 24
    learning_rate: float = 1e-2
    steps_per_epoch: int = 500
    #: 8 optimizer steps per compiled call (one host sync per 8): 1,338 steps in 100 CPU-s
    #: against 1,189 at 1 (bench/README.md, "Quality per CPU-minute")
    steps_per_call: int = 8
    #: training window in characters (truncated backpropagation through time)
    nchars: int = 64
    #: the model's context (at least nchars): the longest prompt accepted and the length of
    #: the held-out windows it is scored on (the recurrent state carries any length)
    context: int = 256
    cell: str = "gru"
    n_layers: int = 1
    width: int = 256
    embedding_dim: int = 64
    dropout: float = 0.0
    clip_norm: float = 1.0
    warmup_steps: int = 0
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
    def tiny(cls) -> CharRNNConfig:
        return cls(
            epochs=1,
            batch_size=8,
            steps_per_epoch=3,
            nchars=16,
            context=32,
            n_layers=1,
            width=16,
            embedding_dim=8,
            steps_per_call=1,
        )

    def validate(self) -> None:
        super().validate()
        text_config_checks(self, "CharRNNConfig")
        cfgmod.require(
            self.cell in ("gru", "lstm"),
            f"CharRNNConfig: cell={self.cell!r} is not one of gru, lstm",
        )
        for k in ("n_layers", "width", "embedding_dim", "context"):
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

    def build_model(self) -> None:
        # By shapes, not by a forward pass: an eager recurrent forward over `nchars` steps
        # took 0.5-4 s under load, paid by every load of the model (`genpipe generate`).
        cfg: CharRNNConfig = self.cfg  # type: ignore[assignment]
        self.embed.build((None, None))
        dim = cfg.embedding_dim
        for rnn in self.rnns:
            rnn.build((None, None, dim))
            dim = cfg.width
        self.head.build((None, None, cfg.width))
        self.built = True

    @property
    def context_length(self) -> int:
        # Never shorter than the training window (a config saved before `context` existed
        # may have nchars above its default).
        return max(int(self.cfg.context), int(self.cfg.nchars))  # type: ignore[attr-defined]

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

    # -- stateful generation, in NumPy from the weights: one character is a few [1, width]
    # matrix products (microseconds), where a TensorFlow call per character cost ~7 ms and a
    # trace in every fresh process (`genpipe generate`: 200 characters took ~1.5 s). The
    # math is Keras's GRUCell (reset_after=True) / LSTMCell, checked against `_run` in
    # tests/zoo/models/test_text_models.py. State: the weights, then per layer [h] or [h, c].
    def _weights(self) -> tuple[np.ndarray, list[list[np.ndarray]], list[np.ndarray]]:
        """(embedding table, per layer [kernel, recurrent_kernel, bias], [head W, head b])."""
        table = np.asarray(self.embed.embeddings, np.float32)
        layers = [[np.asarray(w, np.float32) for w in rnn.cell.weights] for rnn in self.rnns]
        return table, layers, [np.asarray(w, np.float32) for w in self.head.weights]

    def _np_step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        (table, layers, (head_w, head_b)), states = state
        h = table[token][None]
        new_states = []
        for (kernel, rec, bias), st in zip(layers, states, strict=True):
            if self.cfg.cell == "gru":  # type: ignore[attr-defined]
                w = rec.shape[0]
                x = h @ kernel + bias[0]
                inner = st[0] @ rec + bias[1]
                z = _sigmoid(x[:, :w] + inner[:, :w])
                r = _sigmoid(x[:, w : 2 * w] + inner[:, w : 2 * w])
                hh = np.tanh(x[:, 2 * w :] + r * inner[:, 2 * w :])
                h = z * st[0] + (1.0 - z) * hh
                new_states.append([h])
            else:
                i, f, g, o = np.split(h @ kernel + st[0] @ rec + bias, 4, axis=-1)
                c = _sigmoid(f) * st[1] + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                new_states.append([h, c])
        return (h @ head_w + head_b)[0], (state[0], new_states)

    def _prime(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        k = 1 if self.cfg.cell == "gru" else 2  # type: ignore[attr-defined]
        w = self.cfg.width  # type: ignore[attr-defined]
        state: Any = (self._weights(), [[np.zeros((1, w), np.float32)] * k for _ in self.rnns])
        logits = None
        for token in np.asarray(ids, np.int64):
            logits, state = self._np_step(int(token), state)
        return logits, state  # type: ignore[return-value]

    def _advance(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        return self._np_step(int(token), state)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
