"""What every autoregressive text model shares: vocabulary, windows, loss, sampling.

Vocabulary: the sorted distinct characters of the *training* split, stored in the model's
data spec (`data_spec["vocab"]`, a list of characters), so the `.keras` file is
self-contained. Id 0 is reserved for `<unk>`: a character outside the vocabulary (in the
validation text or in a prompt) maps to it. The model never sees `<unk>` in training and
sampling never emits it, so an unknown prompt character only weakens the priming; the prompt
itself is returned verbatim.

Windows: training batches are `batch_size` windows of `nchars + 1` characters at random
offsets (seeded per epoch), split into inputs x = w[:-1] and next-character targets y = w[1:];
held-out batches are the contiguous non-overlapping windows of the split, each as long as the
model's context (`window_length`; a trailing partial window is dropped), so every example has
the same number of characters and the evaluator's per-example mean is the exact mean
nats/char over the covered text.

Generation: `generate(prompt, max_new_tokens, temperature, top_k, seed)` returns the prompt
followed by the continuation. temperature 0 is greedy; top_k > 0 samples among the k most
likely characters; numpy's seeded generator makes a seed reproducible.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from zoo.errors import ConfigError, DataError
from zoo.models.base import GenerativeModel, TrainConfig

UNK = "<unk>"
UNK_ID = 0
#: the prompt used when none is given: a line break, i.e. "start of a paragraph"
DEFAULT_PROMPT = "\n"


def build_vocab(text: str) -> list[str]:
    """The vocabulary of a training text: <unk> then the sorted distinct characters."""
    if not text:
        raise DataError("cannot build a vocabulary from an empty training text")
    return [UNK, *sorted(set(text))]


class Codec:
    """Character <-> id mapping of a vocabulary (id 0 = <unk>)."""

    def __init__(self, vocab: list[str]) -> None:
        if not vocab or vocab[0] != UNK:
            raise ConfigError(f"text vocab must start with {UNK!r}; got {vocab[:3]!r}...")
        self.vocab = list(vocab)
        self.index = {c: i for i, c in enumerate(self.vocab) if i != UNK_ID}
        # Fast path for the common case of code points < 65536: a lookup table.
        self._table = np.zeros(65536, np.int32)
        for c, i in self.index.items():
            if len(c) == 1 and ord(c) < 65536:
                self._table[ord(c)] = i

    @property
    def size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids; characters outside the vocabulary map to <unk> (0)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        small = codes < 65536
        ids = np.zeros(len(codes), np.int32)
        ids[small] = self._table[codes[small]]
        for j in np.flatnonzero(~small):
            ids[j] = self.index.get(text[j], UNK_ID)
        return ids

    def decode(self, ids: Any) -> str:
        return "".join(self.vocab[int(i)] if int(i) != UNK_ID else "\ufffd" for i in ids)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.index})


def sample_next(
    logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator
) -> int:
    """One id from next-character logits; <unk> is never sampled.

    temperature 0 -> argmax (greedy); top_k=1 -> the same argmax, since the kept candidate
    is the first maximum exactly as np.argmax picks it.
    """
    z = np.asarray(logits, np.float64).copy()
    z[UNK_ID] = -np.inf
    if temperature == 0:
        return int(np.argmax(z))
    if top_k > 0:
        order = np.argsort(-z, kind="stable")
        z[order[top_k:]] = -np.inf
    z = z / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(len(p), p=p))


class TextModel(GenerativeModel):
    """Base of the char-level autoregressive models.

    Subclasses implement `logits(x, training)` ([B, T] int ids -> [B, T, V] logits),
    `context_length`, and `_prime(ids)` / `_advance(state, id)` for generation.
    """

    family = "text"
    heldout_split = "val"
    primary_metric = "val_loss"
    lower_is_better = True
    # Untrained: ln(65) = 4.17 nats/char on tinyshakespeare; a character-bigram model reaches
    # about 2.5, a useful model is well below 2.
    default_thresholds: ClassVar[dict[str, tuple[str, float]]] = {"val_loss": ("max", 2.5)}

    def __init__(self, config: Any, data_spec: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, data_spec, **kwargs)
        if "vocab" not in data_spec:
            raise ConfigError(f"{self.name_in_registry}: data_spec has no 'vocab' (text models)")
        self.codec = Codec(list(data_spec["vocab"]))

    # -- subclass hooks --
    @property
    def context_length(self) -> int:
        """The longest prompt (in characters) the model accepts."""
        raise NotImplementedError

    def logits(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        raise NotImplementedError

    def _prime(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        """(logits of the next character, generation state) after reading the prompt ids."""
        raise NotImplementedError

    def _advance(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        """(next logits, new state) after appending one generated id."""
        raise NotImplementedError

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.logits(x, training=training)

    # -- data --
    def window_length(self, training: bool) -> int:
        """Characters per window: `nchars` for training; held-out windows span the model's
        context (the same for a model whose context is its training window)."""
        return int(self.cfg.nchars) if training else self.context_length  # type: ignore[attr-defined]

    def _encoded_split(self, data: Any, split: str) -> np.ndarray:
        # Memoized on the fetched dataset: the trainer builds a pipeline per epoch.
        from zoo.data import text_split

        memo = data.__dict__.setdefault("_text_ids_memo", {})
        key = (split, tuple(self.codec.vocab))
        if key not in memo:
            memo[key] = self.codec.encode(text_split(data, split))
        return memo[key]

    def make_dataset(
        self,
        data: Any,
        split: str,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """{"x": int32 [B, T], "y": int32 [B, T]} windows (see the module docstring).

        shuffle=True: len(split) // batch_size batches of random windows (the trainer's
        epoch length), a pure function of `seed`; shuffle=False: contiguous windows in order.
        """
        t = self.window_length(shuffle)
        ids = self._encoded_split(data, split)
        n = len(ids)
        if n < t + 1:
            raise DataError(
                f"dataset {data.fingerprint[:12]}: split {split!r} has {n} characters, fewer than "
                f"a window of {t} + 1; lower nchars (or context) or use more text"
            )
        const = tf.constant(ids)
        span = tf.range(t + 1, dtype=tf.int64)

        # Plain graph code: autograph's conversion of it (tf.data converts map functions by
        # default) was pure tracing cost.
        @tf.autograph.experimental.do_not_convert
        def windows(offsets: tf.Tensor) -> dict[str, tf.Tensor]:
            w = tf.gather(const, offsets[:, None] + span[None, :])
            return {"x": w[:, :-1], "y": w[:, 1:]}

        if shuffle:
            n_batches = max(1, n // batch_size)
            ds = tf.data.Dataset.random(seed=seed).map(lambda r: tf.math.floormod(r, n - t))
            ds = ds.batch(batch_size, drop_remainder=True).take(n_batches)
        else:
            ds = tf.data.Dataset.range((n - 1) // t).map(lambda i: i * t)
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.map(windows, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    # -- training and evaluation --
    def _token_nll(self, batch: dict[str, tf.Tensor], training: bool) -> tf.Tensor:
        logits = self.logits(batch["x"], training=training)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(batch["y"], tf.int32), logits=tf.cast(logits, tf.float32)
        )

    def make_optimizers(self) -> dict[str, Any]:
        import keras

        cfg = self.cfg
        lr: Any = cfg.learning_rate
        # The cosine's length: `decay_steps`, or else the planned steps. A run whose length
        # is not known in steps (a CPU budget ends it; see bench/bench_quality.py) decays
        # over the steps it surely makes and goes on at the floor, where a cosine over a
        # guessed plan was cut at 60-75% with the rate still at 30-50% of its peak.
        total = int(getattr(cfg, "decay_steps", 0)) or cfg.epochs * cfg.steps_per_epoch
        warmup = int(getattr(cfg, "warmup_steps", 0))
        floor = float(getattr(cfg, "lr_floor", 0.1))
        budget = float(getattr(cfg, "budget_cpu_s", 0.0))
        if getattr(cfg, "cosine_decay", False) and budget > 0:
            lr = CpuBudgetCosine(cfg.learning_rate, budget, floor, warmup)
        elif getattr(cfg, "cosine_decay", False) and total > warmup:
            # Cosine decay to lr_floor (needs steps_per_epoch > 0 or decay_steps), then flat.
            lr = keras.optimizers.schedules.CosineDecay(
                cfg.learning_rate * (0.0 if warmup else 1.0),
                decay_steps=total - warmup,
                alpha=floor,
                warmup_target=cfg.learning_rate if warmup else None,
                warmup_steps=warmup,
            )
        return {
            "main": keras.optimizers.AdamW(
                lr,
                weight_decay=float(getattr(cfg, "weight_decay", 0.0)),
                beta_2=0.99,
            )
        }

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        t = float(self.cfg.nchars)  # type: ignore[attr-defined]
        with tf.GradientTape() as tape:
            nll = self._token_nll(batch, training=True)
            # Mean nats/char over the global batch (sum over replicas = global mean).
            loss = tf.reduce_sum(nll) / (global_batch_size * t)
        clip = float(getattr(self.cfg, "clip_norm", 0.0))
        norm = self.apply_gradients(optimizers["main"], tape, loss, self.trainable_variables, clip)
        return {"loss": loss, "grad_norm": norm / self.replicas()}

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per-window mean nats/char (every window has nchars characters)."""
        return {"loss": tf.reduce_mean(self._token_nll(batch, training=False), axis=1)}

    # -- generation --
    def generate(  # type: ignore[override]
        self,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int = 0,
        seed: int = 0,
    ) -> str:
        """The prompt followed by `max_new_tokens` generated characters."""
        if not isinstance(prompt, str):
            raise ConfigError(
                f"{self.name_in_registry}.generate: prompt must be a string, got "
                f"{type(prompt).__name__} (text models take generate(prompt=..., max_new_tokens=...))"
            )
        if len(prompt) > self.context_length:
            raise ConfigError(
                f"prompt has {len(prompt)} characters, longer than the model's context of "
                f"{self.context_length}; shorten it to the last {self.context_length} characters"
            )
        if (
            isinstance(max_new_tokens, bool)
            or int(max_new_tokens) != max_new_tokens
            or max_new_tokens < 0
        ):
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        if not (
            isinstance(temperature, (int, float))
            and math.isfinite(temperature)
            and temperature >= 0
        ):
            raise ConfigError(f"temperature={temperature!r} must be a finite number >= 0")
        if isinstance(top_k, bool) or int(top_k) != top_k or not 0 <= top_k <= self.codec.size:
            raise ConfigError(f"top_k={top_k!r} must be an integer in [0, {self.codec.size}]")
        rng = np.random.default_rng(seed)
        # An empty prompt primes with the default "start of paragraph" line break.
        ids = self.codec.encode(prompt or DEFAULT_PROMPT)
        out: list[int] = []
        if max_new_tokens == 0:
            return prompt
        logits, state = self._prime(ids)
        for i in range(int(max_new_tokens)):
            tok = sample_next(logits, float(temperature), int(top_k), rng)
            out.append(tok)
            if i + 1 < max_new_tokens:
                logits, state = self._advance(state, tok)
        return prompt + self.codec.decode(out)

    def report_images(self, x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        return {}

    def log_epoch_sample(self, logger: Any, stem: str) -> None:
        """A short text sample after each training epoch, logged as `stem`.txt."""
        logger.text(self.generate(DEFAULT_PROMPT, 300, 0.8, seed=0), f"{stem}.txt")


class CpuBudgetCosine(keras.optimizers.schedules.LearningRateSchedule):
    """A cosine from `peak` to `alpha * peak` over this process's next `budget_s` CPU seconds
    (not steps), after a linear warm-up of `warmup_steps`: a run that a CPU budget ends
    (bench/bench_quality.py) ends its decay there whatever its steps cost under the load."""

    def __init__(self, peak: float, budget_s: float, alpha: float, warmup_steps: int) -> None:
        import time

        self.peak, self.budget, self.alpha, self.warmup = peak, budget_s, alpha, warmup_steps
        self.t0 = time.process_time()

    def _spent(self) -> np.ndarray:
        import time

        return np.float32(min(1.0, (time.process_time() - self.t0) / self.budget))

    def __call__(self, step: Any) -> tf.Tensor:
        frac = tf.reshape(tf.py_function(self._spent, [], tf.float32), [])
        lr = self.peak * (self.alpha + (1.0 - self.alpha) * 0.5 * (1.0 + tf.cos(math.pi * frac)))
        if self.warmup:
            ramp = tf.cast(step + 1, tf.float32) / float(self.warmup)
            lr = tf.minimum(lr, self.peak * ramp)
        return lr

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "budget_s": self.budget,
            "alpha": self.alpha,
            "warmup_steps": self.warmup,
        }


def text_config_checks(cfg: TrainConfig, name: str) -> None:
    """Validation shared by the text configs."""
    from zoo import config as cfgmod

    cfgmod.require(cfg.nchars >= 1, f"{name}: nchars={cfg.nchars} must be >= 1")  # type: ignore[attr-defined]
    cfgmod.require(
        0.0 <= cfg.dropout < 1.0,  # type: ignore[attr-defined]
        f"{name}: dropout={cfg.dropout} must be in [0, 1)",  # type: ignore[attr-defined]
    )
    cfgmod.require(cfg.clip_norm >= 0, f"{name}: clip_norm={cfg.clip_norm} must be >= 0")  # type: ignore[attr-defined]
    cfgmod.require(
        cfg.decay_steps >= 0,  # type: ignore[attr-defined]
        f"{name}: decay_steps={cfg.decay_steps} must be >= 0 (0 = epochs x steps_per_epoch)",  # type: ignore[attr-defined]
    )
    cfgmod.require(
        0.0 <= cfg.lr_floor <= 1.0,  # type: ignore[attr-defined]
        f"{name}: lr_floor={cfg.lr_floor} must be in [0, 1] (a share of learning_rate)",  # type: ignore[attr-defined]
    )
    cfgmod.require(
        cfg.budget_cpu_s >= 0,  # type: ignore[attr-defined]
        f"{name}: budget_cpu_s={cfg.budget_cpu_s} must be >= 0 (0 = the cosine by steps)",  # type: ignore[attr-defined]
    )
