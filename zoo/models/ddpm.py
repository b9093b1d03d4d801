"""DDPM (Ho et al., 2020): a small U-Net with a sinusoidal time embedding predicts the noise.

Training: x0 in [0, 1] is mapped to [-1, 1]; t ~ U{0..T-1}, eps ~ N(0, I),
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,   loss = mean ||eps - eps_theta(x_t, t)||^2
with a linear beta schedule (options: `beta_schedule=cosine`, `prediction=v` with the loss on
v, `loss_weighting=min_snr`, `block=res` for GroupNorm residual blocks; defaults as above).
After every optimizer step an exponential moving average (EMA) of the weights is updated;
the EMA network is a non-trainable sub-network (so it is in the checkpoints and the .keras
file) and is what `generate` samples with.

Sampling: `generate(n, seed, steps=..., sampler="ddim"|"ddpm", eta=...)`. DDPM is ancestral
sampling over all T steps (sigma_t^2 = beta_t); DDIM (Song et al., 2021) uses `steps` evenly
spaced timesteps (default `sample_steps`) and is deterministic given the initial noise at
eta = 0 (default `sample_eta`).
Held-out metric of `eval_batch`: the denoising MSE at fixed random (t, eps) per example;
blessing is on FID (zoo.evaluation.image).
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
from zoo.models.base import GenerativeModel, TrainConfig
from zoo.models.ddpm_unet import UNet


@dataclasses.dataclass
class DDPMConfig(TrainConfig):
    """DDPM settings (training settings are inherited from TrainConfig)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    timesteps: int = 400
    beta_start: float = 1e-4
    beta_end: float = 0.05
    # "linear" (Ho et al.: beta_start..beta_end) or "cosine" (Nichol & Dhariwal, 2021:
    # alpha_bar(t) = cos^2(((t/T) + 0.008) / 1.008 * pi/2); beta_start/beta_end unused).
    # A saved config without this key is from before it existed and means "linear".
    # Linear stays the default. (The variants compared at 100 CPU-s before 2026-12-01 22:20,
    # FID 330-400, were all scored with the checkpoint bug fixed in ddpm_unet.UNet: random
    # EMA blocks; see bench/README.md.)
    beta_schedule: str = "linear"
    # U-Net widths at 1x, 1/2x, 1/4x resolution
    filters: tuple[int, ...] = (16, 32, 32)
    time_dim: int = 32
    ema_decay: float = 0.995
    sampler: str = "ddim"
    sample_steps: int = 40
    # U-Net block: "plain" (two swish convs) or "res" (GroupNorm-swish-conv twice, time
    # embedding in between, residual connection, as in Ho et al.). Saved configs without the
    # key are "plain".
    block: str = "plain"
    # Loss weight per timestep: "none" (Ho et al.'s simple loss) or "min_snr" (Hang et al.,
    # 2023: the eps-MSE times min(SNR_t, min_snr_gamma) / SNR_t, which keeps the nearly
    # noise-free timesteps from dominating early training). Saved configs without it: "none".
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    # What the U-Net predicts: "eps" (the noise, Ho et al.) or "v" = sqrt(abar) eps -
    # sqrt(1 - abar) x0 (Salimans & Ho, 2022). Saved configs without the key: "eps".
    prediction: str = "eps"
    # DDIM sampler's eta: 0 is deterministic, 1 has the ancestral sampler's noise level.
    sample_eta: float = 0.0

    @classmethod
    def tiny(cls) -> DDPMConfig:
        return cls(
            epochs=1,
            batch_size=16,
            timesteps=20,
            filters=(4, 8),
            time_dim=8,
            steps_per_epoch=3,
            sample_steps=4,
        )

    def validate(self) -> None:
        super().validate()
        r = cfgmod.require
        r(self.timesteps >= 2, f"DDPMConfig: timesteps={self.timesteps} must be >= 2")
        # Measured: XLA has no kernel for ResizeNearestNeighborGrad (the U-Net's upsampling,
        # differentiated), so the compiled step would fail at its first run.
        r(
            not self.jit_compile,
            "DDPMConfig: jit_compile=True is not supported: XLA cannot compile the gradient of "
            "the U-Net's nearest-neighbour upsampling (ResizeNearestNeighborGrad); use false",
        )
        r(
            0 < self.beta_start < self.beta_end < 1,
            f"DDPMConfig: need 0 < beta_start ({self.beta_start}) < beta_end ({self.beta_end}) < 1",
        )
        r(
            len(self.filters) >= 1 and all(f >= 1 for f in self.filters),
            f"DDPMConfig: filters={self.filters} must be one or more positive integers",
        )
        r(
            self.time_dim >= 2 and self.time_dim % 2 == 0,
            f"DDPMConfig: time_dim={self.time_dim} must be even >= 2",
        )
        r(0 <= self.ema_decay < 1, f"DDPMConfig: ema_decay={self.ema_decay} must be in [0, 1)")
        r(
            self.beta_schedule in ("linear", "cosine"),
            f"DDPMConfig: beta_schedule={self.beta_schedule!r} is not linear or cosine",
        )
        r(
            self.block in ("plain", "res"),
            f"DDPMConfig: block={self.block!r} is not plain or res",
        )
        r(
            self.loss_weighting in ("none", "min_snr"),
            f"DDPMConfig: loss_weighting={self.loss_weighting!r} is not none or min_snr",
        )
        r(
            self.prediction in ("eps", "v"),
            f"DDPMConfig: prediction={self.prediction!r} is not eps or v",
        )
        r(self.min_snr_gamma > 0, f"DDPMConfig: min_snr_gamma={self.min_snr_gamma} must be > 0")
        r(
            0 <= self.sample_eta <= 1,
            f"DDPMConfig: sample_eta={self.sample_eta} must be in [0, 1]",
        )
        r(
            self.sampler in ("ddim", "ddpm"),
            f"DDPMConfig: sampler={self.sampler!r} is not ddim or ddpm",
        )
        r(
            1 <= self.sample_steps <= self.timesteps,
            f"DDPMConfig: sample_steps={self.sample_steps} must be in [1, timesteps={self.timesteps}]",
        )


#: What a saved config that lacks a key meant when it was saved (the key did not exist yet).
LEGACY: dict[str, Any] = {
    "beta_schedule": "linear",
    "block": "plain",
    "loss_weighting": "none",
    "prediction": "eps",
    "sample_eta": 0.0,
}


def make_betas(cfg: DDPMConfig) -> np.ndarray:
    """The noise schedule beta_1..beta_T (float64) of a config."""
    if cfg.beta_schedule == "cosine":
        s = 0.008
        t = np.arange(cfg.timesteps + 1, dtype="float64") / cfg.timesteps
        ab = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        # Clipped at 0.999 as in the paper: the last steps would otherwise be ~1.
        return np.clip(1.0 - ab[1:] / ab[:-1], 0.0, 0.999)
    return np.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype="float64")


@keras.saving.register_keras_serializable(package="genpipe")
class DDPM(GenerativeModel):
    """Denoising diffusion model; samples with the EMA weights."""

    name_in_registry = "ddpm"
    family = "image"
    config_cls = DDPMConfig
    primary_metric = "test_fid"
    lower_is_better = True
    default_thresholds = {"test_fid": ("max", 60.0)}

    def __init__(
        self, config: dict[str, Any] | DDPMConfig, data_spec: dict[str, Any], **kwargs: Any
    ):
        if isinstance(config, dict):
            # Saved before these keys existed: the behaviour of that time, not today's default.
            config = {**LEGACY, **config}
        super().__init__(config, data_spec, **kwargs)
        cfg: DDPMConfig = self.cfg  # type: ignore[assignment]
        h, w, c = (int(v) for v in data_spec["shape"])
        self.image_shape = (h, w, c)
        self.net = UNet(c, cfg.filters, cfg.time_dim, cfg.block, name="unet")
        self.ema_net = UNet(c, cfg.filters, cfg.time_dim, cfg.block, name="ema_unet")
        self.ema_net.trainable = False  # updated by EMA only, never by the optimizer
        betas = make_betas(cfg)
        self.betas = betas
        self.alpha_bar = np.cumprod(1.0 - betas)

    def build_model(self) -> None:
        x = tf.zeros((1, *self.image_shape))
        t = tf.zeros((1,), tf.int32)
        self.net(x, t)
        self.ema_net(x, t)
        for e, w in zip(self.ema_net.weights, self.net.weights, strict=True):
            e.assign(w)
        self.built = True

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.net(x, tf.zeros(tf.shape(x)[:1], tf.int32))

    def _per_example_mse(
        self, x: tf.Tensor, seed: tf.Tensor, net: UNet, train: bool = False
    ) -> tf.Tensor:
        """Per-example MSE at random (t, eps) drawn from `seed`: the training loss (the
        configured target and weighting) or, with train=False, the plain noise MSE (the same
        held-out metric whatever the network predicts)."""
        cfg: DDPMConfig = self.cfg  # type: ignore[assignment]
        x0 = x * 2.0 - 1.0
        b = tf.shape(x0)[0]
        t = tf.random.stateless_uniform([b], seed=seed, maxval=cfg.timesteps, dtype=tf.int32)
        eps = tf.random.stateless_normal(tf.shape(x0), seed=seed + 1)
        ab = tf.gather(tf.constant(self.alpha_bar, tf.float32), t)[:, None, None, None]
        xt = tf.sqrt(ab) * x0 + tf.sqrt(1.0 - ab) * eps
        out = net(xt, t)
        target = eps
        if cfg.prediction == "v" and train:
            target = tf.sqrt(ab) * eps - tf.sqrt(1.0 - ab) * x0
        elif cfg.prediction == "v":
            out = self._to_eps(out, xt, t)
        mse = tf.reduce_mean(tf.square(target - out), axis=[1, 2, 3])
        if train and cfg.loss_weighting == "min_snr":
            snr = self.alpha_bar / (1.0 - self.alpha_bar)
            # min(SNR, gamma) / SNR for eps; / (SNR + 1) for v (Hang et al., eq. 9-10).
            w = np.minimum(snr, cfg.min_snr_gamma) / (snr + (cfg.prediction == "v"))
            mse = mse * tf.gather(tf.constant(w, tf.float32), t)
        return mse

    def _to_eps(self, out: tf.Tensor, xt: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """The noise estimate from the network's output at integer timesteps t."""
        if self.cfg.prediction != "v":  # type: ignore[attr-defined]
            return out
        ab = tf.gather(tf.constant(self.alpha_bar, tf.float32), t)[:, None, None, None]
        return tf.sqrt(ab) * out + tf.sqrt(1.0 - ab) * xt

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        cfg: DDPMConfig = self.cfg  # type: ignore[assignment]
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32) if ctx else tf.constant(0)
        seed = tf.stack([tf.cast(step, tf.int32) * 2, rid])
        with tf.GradientTape() as tape:
            mse = self._per_example_mse(batch["image"], seed, self.net, train=True)
            loss = tf.reduce_sum(mse)
            loss = loss / global_batch_size
        norm = self.apply_gradients(optimizers["main"], tape, loss, self.net.trainable_variables)
        # EMA with warm-up: early on the average follows the weights closely (Keras/TF recipe).
        s = tf.cast(step, tf.float32)
        decay = tf.minimum(cfg.ema_decay, (1.0 + s) / (10.0 + s))
        for e, w in zip(self.ema_net.weights, self.net.weights, strict=True):
            e.assign(decay * e + (1.0 - decay) * w)
        n = self.replicas()
        return {"loss": loss, "ema_decay": decay / n, "grad_norm": norm / n}

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            "denoise_mse": self._per_example_mse(
                batch["image"], tf.constant([4321, 0]), self.ema_net
            )
        }

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        cfg: DDPMConfig = self.cfg  # type: ignore[assignment]
        sampler = kwargs.pop("sampler", cfg.sampler)
        steps = int(kwargs.pop("steps", cfg.sample_steps if sampler == "ddim" else cfg.timesteps))
        eta = float(kwargs.pop("eta", cfg.sample_eta))
        if kwargs:
            raise TypeError(f"DDPM.generate got unexpected arguments {sorted(kwargs)}")
        if sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"sampler={sampler!r} is not one of ddim, ddpm")
        if sampler == "ddpm" and steps != cfg.timesteps:
            raise ConfigError(
                f"the ddpm sampler runs all timesteps={cfg.timesteps}, got steps={steps}"
            )
        if not 1 <= steps <= cfg.timesteps:
            raise ConfigError(f"steps={steps} must be in [1, {cfg.timesteps}]")
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta={eta} must be in [0, 1]")
        rng = np.random.default_rng(seed)
        out = []
        for i in range(0, n, 500):
            m = min(500, n - i)
            x = rng.standard_normal((m, *self.image_shape)).astype("float32")
            x = self._sample(tf.constant(x), rng, sampler, steps, eta)
            out.append(((x.numpy() + 1.0) / 2.0).clip(0.0, 1.0))
        return np.concatenate(out).astype("float32")

    def _eps_fn(self) -> Any:
        """The EMA network's noise estimate as a tf.function made once per model: a new one per
        `generate` call was traced again each time (each epoch's sample, each evaluation)."""
        fn = self.__dict__.get("_eps_fn_cache")
        if fn is None:
            # Set in __dict__, not as an attribute: Keras would track it as part of the model.
            fn = tf.function(
                lambda x, t: self._to_eps(self.ema_net(x, t), x, t),
                reduce_retracing=True,
                autograph=False,  # no tensor-dependent Python control flow to convert
            )
            self.__dict__["_eps_fn_cache"] = fn
        return fn

    def _sample(
        self, x: tf.Tensor, rng: np.random.Generator, sampler: str, steps: int, eta: float = 0.0
    ) -> tf.Tensor:
        cfg: DDPMConfig = self.cfg  # type: ignore[assignment]
        ab = self.alpha_bar
        eps_fn = self._eps_fn()
        m = int(x.shape[0])
        if sampler == "ddpm":
            for t in reversed(range(cfg.timesteps)):
                eps = eps_fn(x, tf.fill([m], t))
                beta, a = self.betas[t], 1.0 - self.betas[t]
                x = (x - beta / math.sqrt(1.0 - ab[t]) * eps) / math.sqrt(a)
                if t > 0:
                    z = rng.standard_normal(x.shape).astype("float32")
                    x = x + math.sqrt(beta) * z
            return tf.clip_by_value(x, -1.0, 1.0)
        ts = np.linspace(cfg.timesteps - 1, 0, steps).round().astype(int)
        for k, t in enumerate(ts):
            eps = eps_fn(x, tf.fill([m], int(t)))
            x0 = (x - math.sqrt(1.0 - ab[t]) * eps) / math.sqrt(ab[t])
            x0 = tf.clip_by_value(x0, -1.0, 1.0)
            if k == len(ts) - 1:
                return x0
            prev = ab[ts[k + 1]]
            # Re-derive eps from the clipped x0 for consistency. eta = 0: deterministic;
            # eta > 0 moves part of the noise term to fresh noise (Song et al., eq. 16).
            eps = (x - math.sqrt(ab[t]) * x0) / math.sqrt(1.0 - ab[t])
            sigma = eta * math.sqrt((1.0 - prev) / (1.0 - ab[t]) * (1.0 - ab[t] / prev))
            x = math.sqrt(prev) * x0 + math.sqrt(1.0 - prev - sigma**2) * eps
            if sigma > 0:
                x = x + sigma * rng.standard_normal(x.shape).astype("float32")
        return x
