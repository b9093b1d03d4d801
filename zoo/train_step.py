"""The trainer's compiled call (zoo.train): up to K optimizer steps per call under any
tf.distribute strategy, traced once per run and without autograph (tracing, not computing, was
most of a tiny run's trainer time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from zoo.models.base import GenerativeModel, TrainConfig


def compile_steps(
    model: GenerativeModel,
    optimizers: dict[str, Any],
    strategy: tf.distribute.Strategy,
    step_var: tf.Variable,
    cfg: TrainConfig,
    allow_jit: bool,
) -> Callable[..., Any]:
    """The compiled loop: up to `n` optimizer steps per call, like Keras's
    `steps_per_execution`, with the metric sums and the divergence check kept in the graph
    so the host waits once per call. It stops right after the first bad step and returns
    (metric sums, steps done, bad?, that step's metrics)."""
    global_bs = cfg.batch_size
    replica_step = model.train_step_replica
    if allow_jit and cfg.jit_compile:
        # XLA compiles the step itself; the loop around it reads an iterator, which XLA
        # cannot. No XLA across replicas: it has no CPU collectives.
        replica_step = tf.function(model.train_step_replica, jit_compile=True, autograph=False)

    def one(iterator: Any) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        per_replica = strategy.run(
            replica_step, args=(next(iterator), optimizers, global_bs, step_var)
        )
        step_var.assign_add(1)
        out = {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }
        finite = tf.reduce_all(
            tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in out.values()])
        )
        too_big = out["grad_norm"] > cfg.max_grad_norm if "grad_norm" in out else False
        return out, tf.logical_or(tf.logical_not(finite), too_big)

    # No autograph anywhere: converting the step's Python source (ours and the models')
    # cost ~2 s per process, and no step has tensor-dependent Python control flow; the
    # one loop here is written as tf.while_loop.
    @tf.function(autograph=False)
    def run_one(iterator: Any, n: tf.Tensor) -> Any:
        # One step per call: no loop, so the step is traced (and optimized) once, not twice.
        out, bad = one(iterator)
        return out, tf.constant(1, tf.int32), bad, out

    # The loop calls the step twice (before the loop and in its body): as a function of
    # its own it is traced once, not twice.
    one_fn = tf.function(one, autograph=False)

    @tf.function(autograph=False)
    def run_steps(iterator: Any, n: tf.Tensor) -> Any:
        out, bad = one_fn(iterator)

        def more(sums: Any, done: tf.Tensor, bad: tf.Tensor, out: Any) -> tf.Tensor:
            return tf.logical_and(done < n, tf.logical_not(bad))

        def body(sums: Any, done: tf.Tensor, bad: tf.Tensor, out: Any) -> Any:
            out, bad = one_fn(iterator)
            return {k: sums[k] + out[k] for k in sums}, done + 1, bad, out

        return tf.while_loop(more, body, (out, tf.constant(1, tf.int32), bad, out))

    return run_steps if cfg.steps_per_call > 1 else run_one
