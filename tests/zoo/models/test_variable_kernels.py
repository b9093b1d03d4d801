"""Model and optimizer variables are created with VarHandleOp's debugging label left empty,
so TensorFlow reuses one cached eager kernel per shape instead of instantiating one per
variable (issue 14 fixed costs: ~1.6 ms per variable in a fresh task process). Nothing a
user sees changes: names, paths, values, independence, checkpoints."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import gen_resource_variable_ops

from zoo import models, train_setup
from zoo.models import base
from zoo.models.base import shared_variable_kernels

SPEC = {"shape": [28, 28, 1], "num_classes": 10}


def test_inside_the_label_is_empty_and_outside_it_is_restored(monkeypatch):
    seen: list[str] = []
    original = base._ORIGINAL_VAR_HANDLE_OP

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("debug_name"))
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "_ORIGINAL_VAR_HANDLE_OP", spy)
    with shared_variable_kernels(), shared_variable_kernels():  # nests
        a = tf.Variable(tf.zeros((2, 3)), name="a")
        b = tf.Variable(tf.zeros((2, 3)), name="b")
    assert seen == ["", ""]
    assert gen_resource_variable_ops.var_handle_op is base._ORIGINAL_VAR_HANDLE_OP  # unpatched
    # same shape, one kernel: still two variables, with their own names
    a.assign(tf.ones((2, 3)))
    assert float(tf.reduce_sum(b)) == 0.0 and float(tf.reduce_sum(a)) == 6.0
    assert (a.name, b.name) == ("a:0", "b:0")


def _build(shared: bool) -> tuple[Any, Any]:
    def run() -> tuple[Any, Any]:
        keras.utils.set_random_seed(0)
        cfg = models.resolve_config("vae", "tiny", {})
        with contextlib.ExitStack() as stack:
            if not shared:  # the former build: every variable labelled
                stack.enter_context(_unpatched())
            return train_setup.build_for_training(models.get("vae"), cfg, SPEC)

    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(run()))  # fresh Keras name counters
    t.start()
    t.join()
    return out[0]


@contextlib.contextmanager
def _unpatched() -> Any:
    saved = train_setup.shared_variable_kernels
    train_setup.shared_variable_kernels = contextlib.nullcontext
    try:
        yield
    finally:
        train_setup.shared_variable_kernels = saved


def test_model_and_optimizer_are_what_they_were_and_checkpoints_cross(tmp_path):
    (m1, o1), (m2, o2) = _build(shared=True), _build(shared=False)
    v1 = [*m1.variables, *o1["main"].variables]
    v2 = [*m2.variables, *o2["main"].variables]
    assert [(v.path, v.name, tuple(v.shape)) for v in v1] == [
        (v.path, v.name, tuple(v.shape)) for v in v2
    ]
    for a, b in zip(v1, v2, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # a checkpoint of one restores into the other (object graph unchanged)
    for v in m2.trainable_variables:
        v.assign(v + 1.0)
    path = tf.train.Checkpoint(model=m2, opt_main=o2["main"]).write(str(tmp_path / "ck"))
    tf.train.Checkpoint(model=m1, opt_main=o1["main"]).read(path).assert_consumed()
    for a, b in zip(m1.variables, m2.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
