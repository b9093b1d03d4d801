"""The trainer: our own loop (tf.function + strategy.run), not Keras `fit`.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy, so the trainer owns the loop and every
model supplies a per-replica `train_step_replica`. One trainer serves three scales, chosen by
`distribution` in the config: one device, MirroredStrategy over the GPUs of a node, and
MultiWorkerMirroredStrategy across nodes (TF_CONFIG). `batch_size` is the *global* batch.

Checkpoints (model, optimizers, step, epoch, position in the epoch) are published to the
object store with a `latest.json` pointer written last; a restarted process with the same
checkpoint URI (a KFP retry of the same task) resumes from it. Only the newest one is kept in
the object store (zoo.checkpoints says what is kept when).

Here: the loop (Trainer), its entry point for a pipeline run and the exact held-out means.
Beside it: zoo.train_setup (strategy, model + optimizers, the saved config.json; also
importable from here), zoo.train_step (the compiled K-steps call) and zoo.train_checkpoint
(Checkpointer: save, publish, restore).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from zoo import checkpoints as ckpts
from zoo import config as cfgmod
from zoo import models, names, timeline
from zoo.errors import DataError, TrainingDiverged
from zoo.models.base import GenerativeModel, TrainConfig

# One loader for training, evaluation and serving: the served model's load path (zoo.serving)
# must stay free of storage/training imports, so it owns the function and we re-export it.
from zoo.serving import load_model  # noqa: F401
from zoo.storage import ObjectStore
from zoo.tracking import RunLogger
from zoo.train_checkpoint import Checkpointer
from zoo.train_setup import (
    build_for_training,
    data_spec_from_manifest,
    make_strategy,
    write_model_config,
)
from zoo.train_step import compile_steps


@dataclasses.dataclass
class TrainResult:
    model_dir: Path
    epochs: int
    steps: int
    metrics: dict[str, float]
    wall_s: float
    samples_per_s: float
    resumed_from_step: int


def checkpoint_uri(store: ObjectStore, mlflow_run_id: str) -> str:
    """Where one training run's checkpoints live: keyed by the MLflow run, so a retried task
    (single pod or a TFJob's workers) finds and resumes them."""
    return ckpts.prefix_uri(store, mlflow_run_id)


def train_for_run(
    model_name: str,
    cfg: TrainConfig,
    data: Any,
    workdir: Path,
    store: ObjectStore,
    mlflow_run_id: str,
    logger: RunLogger | None = None,
) -> TrainResult:
    """Train for one pipeline run (a single pod, or one TFJob worker).

    Checkpoints are keyed by the run, so a retried task resumes; with a `logger` (the pod, or
    the chief) the run's overall `train_wall_s` and `train_samples_per_s_overall` are logged.
    """
    result = Trainer(
        model_name,
        cfg,
        data,
        workdir,
        logger=logger,
        checkpoint_uri=checkpoint_uri(store, mlflow_run_id),
        store=store,
    ).run()
    if logger:
        logger.metrics(
            {"train_wall_s": result.wall_s, "train_samples_per_s_overall": result.samples_per_s}
        )
    return result


class Trainer:
    """Trains one registered model on a fetched dataset."""

    def __init__(
        self,
        model_name: str,
        cfg: TrainConfig,
        data: Any,  # zoo.data.LocalDataset
        workdir: Path,
        logger: RunLogger | None = None,
        checkpoint_uri: str | None = None,
        store: ObjectStore | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.model_cls = models.get(model_name)
        self.model_name = model_name
        self.cfg = cfg
        self.data = data
        self.workdir = Path(workdir)
        self.logger = logger
        self.checkpoint_uri = checkpoint_uri
        self.store = store
        self.on_epoch = on_epoch
        self.on_step = on_step

    def _epoch_dataset(
        self, model: GenerativeModel, epoch: int, skip: int, steps: int
    ) -> tf.data.Dataset:
        ds = model.make_dataset(
            self.data,
            "train",
            self.cfg.batch_size,
            shuffle=True,
            seed=self.cfg.seed * 100_003 + epoch,  # deterministic per epoch: resume skips exactly
            drop_remainder=True,
        )
        ds = ds.skip(skip).take(steps - skip)
        if (os.cpu_count() or 1) <= 4:
            # On a small CPU machine tf.data's own threads preempt the train step's compute
            # threads; one input thread is plenty for in-memory data (+12% on 2 cores).
            options = tf.data.Options()
            options.threading.private_threadpool_size = 1
            ds = ds.with_options(options)
        return ds

    def _distribute(self, strategy: tf.distribute.Strategy, ds: tf.data.Dataset) -> Any:
        """Split batches across replicas; a single device takes the dataset as it is.

        `experimental_distribute_dataset` under OneDeviceStrategy adds a device-prefetch
        stage that halved CPU training throughput (435 vs 1105 samples/s for the VAE).
        """
        if strategy.num_replicas_in_sync == 1 and isinstance(
            strategy, tf.distribute.OneDeviceStrategy
        ):
            return ds
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # The default (FILE) auto-shard gives workers different shard files and so maybe
            # different step counts, which deadlocks the all-reduce; DATA keeps them in step.
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA
            )
            ds = ds.with_options(options)
        return strategy.experimental_distribute_dataset(ds)

    def run(self) -> TrainResult:
        cfg = self.cfg
        tf.keras.utils.set_random_seed(cfg.seed)
        manifest = self.data.manifest
        n_train = manifest["splits"]["train"]["count"]
        if n_train < cfg.batch_size:
            raise DataError(
                f"dataset {manifest['fingerprint'][:12]}: training split has {n_train} examples, "
                f"fewer than batch_size={cfg.batch_size}; lower batch_size"
            )
        steps_per_epoch = n_train // cfg.batch_size
        if cfg.steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)

        strategy = make_strategy(cfg.distribution)
        with strategy.scope():
            model, optimizers = build_for_training(
                self.model_cls, cfg, data_spec_from_manifest(manifest, self.data)
            )
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        ckpt = tf.train.Checkpoint(
            model=model, step=step_var, **{f"opt_{k}": v for k, v in optimizers.items()}
        )
        checkpointer = Checkpointer(ckpt, self.workdir / "ckpt", self.checkpoint_uri, self.store)
        latest = checkpointer.restore_latest()
        resumed_from = int(step_var.numpy()) if latest else 0
        timeline.mark("trainer: model built")
        global_bs = cfg.batch_size

        single = isinstance(strategy, tf.distribute.OneDeviceStrategy)
        run_steps = compile_steps(model, optimizers, strategy, step_var, cfg, allow_jit=single)
        # Params once per run: not again on a retry, but on a run that adopted another run's
        # checkpoint (`genpipe run --resume`), which has none yet.
        if self.logger and (not latest or latest.get("adopted_from")):
            self.logger.params({"model": self.model_name, **cfgmod.to_dict(cfg)})
            self.logger.params(
                {
                    "resolved_steps_per_epoch": steps_per_epoch,
                    "replicas": strategy.num_replicas_in_sync,
                }
            )

        t0 = time.perf_counter()
        trained_samples = 0
        train_time = 0.0
        epoch_metrics: dict[str, float] = {}
        start_epoch = resumed_from // steps_per_epoch
        last_ckpt = (resumed_from, time.monotonic())  # (step, time) of the newest checkpoint
        for epoch in range(start_epoch, cfg.epochs):
            skip = resumed_from - epoch * steps_per_epoch if epoch == start_epoch else 0
            sums: dict[str, float] = {}
            count = 0
            t_epoch = time.perf_counter()
            dist = self._distribute(
                strategy, self._epoch_dataset(model, epoch, skip, steps_per_epoch)
            )
            iterator = iter(dist)
            todo = steps_per_epoch - skip
            step = int(step_var.numpy())
            while count < todo:
                n = self._steps_this_call(count, todo, step, last_ckpt)
                sums_t, n_done, bad, last_out = run_steps(iterator, tf.constant(n, tf.int32))
                # One host sync per call (not per step): a GPU keeps its queue full.
                count += int(n_done)
                if count == int(n_done):
                    timeline.mark("trainer: first call of the epoch")
                step = int(step_var.numpy())
                if bool(bad):
                    self._check_finite(
                        {k: float(v) for k, v in last_out.items()}, epoch, step, checkpointer
                    )
                for k, v in sums_t.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if self._mid_epoch_checkpoint_due(step, last_ckpt) and count < todo:
                    checkpointer.save(step, {"epoch": epoch, "mid_epoch": True})
                    last_ckpt = (step, time.monotonic())
                if self.on_step:
                    self.on_step(step)
            dt = time.perf_counter() - t_epoch
            train_time += dt
            trained_samples += count * global_bs
            epoch_metrics = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
            epoch_metrics["train_samples_per_s"] = count * global_bs / dt if dt > 0 else 0.0
            step = int(step_var.numpy())
            timeline.mark("trainer: epoch's steps done")
            checkpointer.save(step, {"epoch": epoch + 1})
            last_ckpt = (step, time.monotonic())
            timeline.mark("trainer: checkpoint published")
            if self.logger:
                self.logger.metrics(epoch_metrics, step=epoch + 1)
                model.log_epoch_sample(self.logger, f"samples/epoch_{epoch + 1:03d}")
                timeline.mark("trainer: epoch logged")
            if self.on_epoch:
                self.on_epoch(epoch + 1, epoch_metrics)
            # One parseable line per epoch: `genpipe run` turns it into a progress bar.
            print(
                f"genpipe-progress epoch={epoch + 1} epochs={cfg.epochs} loss={epoch_metrics.get('train_loss', float('nan')):.4f} "
                f"samples_per_s={epoch_metrics['train_samples_per_s']:.1f}",
                flush=True,
            )

        model_dir = self.save_model(model)
        timeline.mark("trainer: model saved")
        wall = time.perf_counter() - t0
        return TrainResult(
            model_dir=model_dir,
            epochs=cfg.epochs,
            steps=int(step_var.numpy()),
            metrics=epoch_metrics,
            wall_s=wall,
            samples_per_s=trained_samples / train_time if train_time > 0 else 0.0,
            resumed_from_step=resumed_from,
        )

    def _steps_this_call(self, count: int, todo: int, step: int, last: tuple[int, float]) -> int:
        """Steps for the next call: `steps_per_call`, but never past the epoch's end or the
        next step-interval checkpoint (a retry must lose at most one interval)."""
        n = min(self.cfg.steps_per_call, todo - count)
        every = self.cfg.checkpoint_every_steps
        if every:
            n = min(n, max(1, last[0] + every - step))
        return n

    def _mid_epoch_checkpoint_due(self, step: int, last: tuple[int, float]) -> bool:
        every_steps, every_s = self.cfg.checkpoint_every_steps, self.cfg.checkpoint_every_seconds
        return bool(
            (every_steps and step - last[0] >= every_steps)
            or (every_s and time.monotonic() - last[1] >= every_s)
        )

    def _check_finite(self, out: dict[str, float], epoch: int, step: int, ck: Checkpointer) -> None:
        bad = {k: v for k, v in out.items() if not math.isfinite(v)}
        reason = None
        if bad:
            reason = f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}"
        elif out.get("grad_norm", 0.0) > self.cfg.max_grad_norm:
            reason = f"gradient norm {out['grad_norm']:.3g} exceeds max_grad_norm={self.cfg.max_grad_norm:g}"
        if reason:
            where = ck.uri or str(ck.local_dir)
            # Only claim a kept checkpoint when one exists (a first-epoch divergence has none).
            saved = bool(ck.manager.latest_checkpoint) or bool(
                ck.uri and ck.store and ck.store.exists(f"{ck.uri}/latest.json")
            )
            kept = (
                f"last good checkpoint kept at {where}"
                if saved
                else f"no checkpoint had been written yet (none at {where})"
            )
            if self.logger:
                self.logger.tags({names.TAG_DIVERGED: reason})
            raise TrainingDiverged(
                f"{self.model_name}: training diverged at epoch {epoch + 1}, step {step}: {reason}; "
                f"{kept}; lower learning_rate or max_grad_norm"
            )

    def save_model(self, model: GenerativeModel) -> Path:
        out = self.workdir / "model"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        model.save(out / "model.keras")
        write_model_config(out, self.model_name, self.cfg, model.data_spec, self.data.manifest)
        return out


def evaluate_split(
    model: GenerativeModel, data: Any, split: str, batch_size: int = 256
) -> dict[str, float]:
    """Exact means of the model's per-example held-out metrics over a whole split."""
    ds = model.make_dataset(data, split, batch_size, shuffle=False)
    # No autograph: eval_batch has no tensor-dependent Python control flow (a tensor used as a
    # bool fails the trace), and converting its source took half of its trace time. The
    # dataset's spec (batch dimension unknown) as the signature: one trace, not a second one
    # for the last, partial batch.
    step = tf.function(model.eval_batch, input_signature=[ds.element_spec], autograph=False)
    sums: dict[str, float] = {}
    n = 0
    for batch in ds:
        out = step(batch)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(v.numpy(), dtype="float64"))
        n += int(next(iter(out.values())).shape[0])
    if n == 0:
        raise DataError(f"dataset {data.manifest['fingerprint'][:12]}: split {split!r} is empty")
    return {k: v / n for k, v in sums.items()}
