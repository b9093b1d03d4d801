"""zoo.train.evaluate_split traces `eval_batch` without autograph (half its trace time): every
registered model's eval_batch must trace so and give exactly what the autograph trace gives."""

import numpy as np
import pytest
import tensorflow as tf

from zoo import models

SPECS = {
    "image": {"shape": [28, 28, 1], "num_classes": 10},
    "text": {"shape": None, "num_classes": None, "vocab": ["<unk>", *"\n !,.:;?abcdefghij"]},
}


def _batch(family: str, n: int = 8) -> dict:
    rng = np.random.default_rng(0)
    if family == "image":
        return {
            "image": tf.constant(rng.random((n, 28, 28, 1), dtype=np.float32)),
            "label": tf.constant(rng.integers(0, 10, n), tf.int64),
        }
    ids = rng.integers(1, len(SPECS["text"]["vocab"]), (n, 17))
    return {"x": tf.constant(ids[:, :-1], tf.int32), "y": tf.constant(ids[:, 1:], tf.int32)}


@pytest.mark.parametrize("name", models.names())
def test_eval_batch_traces_without_autograph_to_the_same_values(name):
    cls = models.get(name)
    model = cls(cls.tiny_config(), SPECS[cls.family])
    model.build_model()
    batch = _batch(cls.family)
    converted = tf.function(model.eval_batch)(batch)
    plain = tf.function(model.eval_batch, autograph=False)(batch)
    assert set(plain) == set(converted)
    for k in converted:
        np.testing.assert_array_equal(plain[k].numpy(), converted[k].numpy(), err_msg=k)
