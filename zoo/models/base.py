"""The one interface every zoo model implements.

A model is one file: a config dataclass (defaults + `tiny()`), and a Keras 3 model subclass
registered as serializable that knows how to
  * take one training step on one replica (`train_step_replica`), so the trainer can run it
    under any `tf.distribute` strategy (Keras `fit` does not work with multi-worker strategies),
  * score a held-out batch (`eval_batch`, per-example sums, so the evaluator can average
    exactly over a whole split regardless of batch size),
  * `generate(n, seed)` samples as numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import gen_resource_variable_ops

from zoo import config as cfgmod


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Layers created inside take the Keras dtype policy `precision` (it is saved with them)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


_handles_lock = threading.Lock()
_handles_depth = 0


def _var_handle_op_without_debug_name(*args: Any, **kwargs: Any) -> Any:
    kwargs["debug_name"] = ""
    return _ORIGINAL_VAR_HANDLE_OP(*args, **kwargs)


_ORIGINAL_VAR_HANDLE_OP = gen_resource_variable_ops.var_handle_op
_HAS_DEBUG_NAME = "debug_name" in inspect.signature(_ORIGINAL_VAR_HANDLE_OP).parameters


@contextlib.contextmanager
def shared_variable_kernels() -> Iterator[None]:
    """Variables created inside share TensorFlow's cached eager VarHandleOp kernels.

    Eagerly, TF keys its kernel cache by an op's attributes, and VarHandleOp's `debug_name`
    (only a debugging label) is each variable's scoped name: every variable of a model and
    every optimizer slot (`.../kernel_momentum`) instantiated a kernel of its own, ~1.6 ms
    each, a third of the VAE's model + Adam build in a fresh process. Inside, the label is
    left empty (names, paths, values and checkpoints are unchanged: the variable's name is
    kept apart from the label), so same-shaped variables reuse one kernel. Where TensorFlow's
    op has no such attribute, nothing changes.
    """
    global _handles_depth
    if not _HAS_DEBUG_NAME:
        yield
        return
    with _handles_lock:
        _handles_depth += 1
        gen_resource_variable_ops.var_handle_op = _var_handle_op_without_debug_name
    try:
        yield
    finally:
        with _handles_lock:
            _handles_depth -= 1
            if _handles_depth == 0:
                gen_resource_variable_ops.var_handle_op = _ORIGINAL_VAR_HANDLE_OP


def f32(x: tf.Tensor) -> tf.Tensor:
    """A network output as float32 (a no-op under the float32 policy): under a mixed policy,
    losses, log-densities and sampling math stay in float32, where sums do not overflow."""
    return tf.cast(x, tf.float32)


@dataclasses.dataclass
class TrainConfig:
    """Training settings shared by every model (model configs inherit and add their own)."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    # Stop with a clear error when the gradient global norm exceeds this (exploding gradients).
    max_grad_norm: float = 1e6
    # Cap on optimizer steps per epoch (0 = full epoch); tiny configs use it to stay fast.
    steps_per_epoch: int = 0
    # Training scale: "auto" (one device, or MirroredStrategy when >1 GPU), "single",
    # "mirrored", "multi_worker" (needs TF_CONFIG).
    distribution: str = "auto"
    # Compile the train step with XLA (one device only: XLA has no CPU collectives). Off by
    # default: on CPU it is slower or fails for some models (see bench/README.md).
    jit_compile: bool = False
    # Optimizer steps per compiled call (like Keras `steps_per_execution`): the host reads
    # metrics once per call, so an accelerator is not stalled after every step.
    steps_per_call: int = 1
    # Numeric precision: "float32", or a Keras mixed policy ("mixed_float16" with dynamic loss
    # scaling, "mixed_bfloat16"): float16/bfloat16 compute, float32 variables. For GPUs (see
    # the gpu cluster profile); on CPUs without bf16/fp16 units it is slower.
    precision: str = "float32"
    # Mid-epoch checkpoints (every N optimizer steps and/or every S seconds; 0 = off) on top
    # of the one at each epoch end: a killed task loses at most one interval when retried.
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 300.0

    def validate(self) -> None:
        name = type(self).__name__
        cfgmod.require(self.epochs >= 1, f"{name}: epochs={self.epochs} must be >= 1")
        cfgmod.require(self.batch_size >= 1, f"{name}: batch_size={self.batch_size} must be >= 1")
        cfgmod.require(
            0 < self.learning_rate < 10,
            f"{name}: learning_rate={self.learning_rate} must be in (0, 10)",
        )
        cfgmod.require(self.steps_per_epoch >= 0, f"{name}: steps_per_epoch must be >= 0")
        cfgmod.require(
            self.steps_per_call >= 1, f"{name}: steps_per_call={self.steps_per_call} must be >= 1"
        )
        cfgmod.require(
            self.checkpoint_every_steps >= 0 and self.checkpoint_every_seconds >= 0,
            f"{name}: checkpoint_every_steps={self.checkpoint_every_steps} and "
            f"checkpoint_every_seconds={self.checkpoint_every_seconds} must be >= 0 (0 = off)",
        )
        cfgmod.require(
            self.precision in cfgmod.PRECISIONS,
            f"{name}: precision={self.precision!r} is not one of {', '.join(cfgmod.PRECISIONS)}",
        )
        cfgmod.require(
            self.distribution in ("auto", "single", "mirrored", "multi_worker"),
            f"{name}: distribution={self.distribution!r} is not one of auto, single, mirrored, multi_worker",
        )


class GenerativeModel(keras.Model):
    """Base class of every zoo model. Subclasses set the class variables and the four methods."""

    #: registry name, e.g. "vae"
    name_in_registry: ClassVar[str] = ""
    #: "image" or "text": which data the model trains on and which evaluator applies
    family: ClassVar[str] = "image"
    #: the config dataclass
    config_cls: ClassVar[type[TrainConfig]] = TrainConfig
    #: the held-out metric that decides blessing and promotion, and its direction
    primary_metric: ClassVar[str] = ""
    lower_is_better: ClassVar[bool] = True
    #: default absolute blessing thresholds: metric -> ("max" | "min", value)
    default_thresholds: ClassVar[dict[str, tuple[str, float]]] = {}
    #: the held-out split evaluation uses ("test" for images, "val" for text)
    heldout_split: ClassVar[str] = "test"
    #: class-conditional: `generate` takes `labels=`, so the image evaluator asks for the
    #: held-out labels and reports `cond_accuracy` (thresholds may name per-label ones too)
    conditional: ClassVar[bool] = False
    #: generated samples the image evaluator scores (FID, KID, ...); 0 = its default (1000).
    #: GENPIPE_EVAL_SAMPLES overrides it; slow samplers (PixelCNN) ask for fewer.
    eval_samples: ClassVar[int] = 0

    def __init__(
        self, config: dict[str, Any] | TrainConfig, data_spec: dict[str, Any], **kwargs: Any
    ):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = cfgmod.from_dict(self.config_cls, config, f"{self.name_in_registry} config")
        self.cfg = config
        self.data_spec = dict(data_spec)

    # -- Keras serialization: config + data spec are all that is needed to rebuild --
    def get_config(self) -> dict[str, Any]:
        return {"config": cfgmod.to_dict(self.cfg), "data_spec": self.data_spec}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GenerativeModel:
        model = cls(config["config"], config["data_spec"])
        with shared_variable_kernels():
            model.build_model()
        return model

    # -- the interface --
    def build_model(self) -> None:
        """Create all variables (called once, inside the strategy scope)."""
        raise NotImplementedError

    def make_optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        """Optimizers by name (one for most models; generator/discriminator for GANs)."""
        return {"main": keras.optimizers.Adam(self.cfg.learning_rate)}

    def train_step_replica(
        self,
        batch: dict[str, tf.Tensor],
        optimizers: dict[str, Any],
        global_batch_size: int,
        step: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """One optimizer step on one replica's share of a global batch.

        Losses are averaged over the *global* batch (so gradients summed across replicas are
        right); returns scalars to log, which the trainer sums over replicas. Must include
        "loss" and "grad_norm".
        """
        raise NotImplementedError

    # -- helpers for train steps --
    @staticmethod
    def apply_gradients(
        opt: Any, tape: tf.GradientTape, loss: tf.Tensor, variables: list, clip_norm: float = 0.0
    ) -> tf.Tensor:
        """One optimizer update from `loss` recorded on `tape`; returns the gradients' global
        norm (before clipping to `clip_norm`, when that is > 0).

        Under a LossScaleOptimizer (mixed_float16) the backward pass starts from the loss scale
        instead of 1 (= differentiating the scaled loss) and the optimizer unscales; the norm
        and the clip are of the unscaled gradients. A step whose scaled gradients overflow is
        skipped by the optimizer (which lowers the scale): that is routine, not divergence, so
        its norm is reported as 0.
        """
        scale = None
        if isinstance(opt, keras.optimizers.LossScaleOptimizer):
            scale = tf.cast(opt.dynamic_scale, tf.float32)
        # Scaling the seed gradient is scaling the loss, without re-opening the tape.
        seed = None if scale is None else tf.cast(scale, loss.dtype)
        grads = tape.gradient(loss, variables, output_gradients=seed)
        norm = tf.linalg.global_norm(grads)
        if clip_norm > 0:
            limit = clip_norm if scale is None else clip_norm * scale
            grads, _ = tf.clip_by_global_norm(grads, limit, use_norm=norm)
        opt.apply_gradients(zip(grads, variables, strict=True))
        if scale is not None:
            norm = norm / scale
            norm = tf.where(tf.math.is_finite(norm), norm, tf.zeros_like(norm))
        return norm

    @staticmethod
    def replicas() -> float:
        """Replicas in sync: divide per-replica values by it so the trainer's sum is a mean."""
        ctx = tf.distribute.get_replica_context()
        return float(ctx.num_replicas_in_sync) if ctx else 1.0

    def eval_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per-example values ([batch] tensors) of held-out metrics; the evaluator averages them."""
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
        """Batches of one split of a fetched dataset (zoo.data.LocalDataset) for this model.

        Image models get {"image": float32 [B,H,W,C] in [0,1], "label": int64 [B]}; text
        models override this to yield token windows.
        """
        from zoo.data import image_dataset

        return image_dataset(
            data, split, batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder
        )

    def report_images(self, x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        """Figures for the evaluation report (default: a grid of 64 samples)."""
        return {"samples": self.generate(64, seed=seed)}

    def log_epoch_sample(self, logger: Any, stem: str) -> None:
        """Log a sample after each training epoch (images: a grid of 64 as `stem`.png)."""
        logger.image(self.generate(64, seed=0), f"{stem}.png")

    def generate(self, n: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
        """n samples as numpy; images are float32 in [0, 1] with shape [n, H, W, C]."""
        raise NotImplementedError

    @classmethod
    def default_config(cls) -> TrainConfig:
        return cls.config_cls()

    @classmethod
    def tiny_config(cls) -> TrainConfig:
        return cls.config_cls.tiny()  # type: ignore[attr-defined]
