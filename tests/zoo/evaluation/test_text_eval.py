"""Text evaluation: exact validation cross-entropy, derived units, sample texts."""

import math

import numpy as np
import tensorflow as tf

from zoo import models
from zoo.data import LocalDataset
from zoo.evaluation import evaluate
from zoo.evaluation.text import metrics_from_loss
from zoo.train import data_spec_from_manifest

TRAIN = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 30
VAL = "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n" * 3


def _data(tmp_path):
    shards, splits = {}, {}
    for name, text in (("train", TRAIN), ("val", VAL)):
        p = tmp_path / f"{name}.txt"
        p.write_text(text, encoding="utf-8")
        shards[name] = [p]
        splits[name] = {"count": len(text), "shards": [{"key": f"s3://b/d/{name}.txt"}]}
    return LocalDataset(
        {"kind": "text", "fingerprint": "e" * 64, "splits": splits}, tmp_path, shards
    )


def test_text_evaluation_is_the_exact_mean_over_val_windows(tmp_path):
    data = _data(tmp_path)
    cfg = models.resolve_config("gpt", "tiny")
    model = models.get("gpt")(cfg, data_spec_from_manifest(data.manifest, data))
    model.build_model()
    result = evaluate(model, data, seed=0)
    m = result.metrics
    assert set(m) == {"val_loss", "val_bits_per_char", "val_perplexity"}

    # Independent reference: cross-entropy of every window, computed here from the logits.
    t = cfg.nchars
    ids = model.codec.encode(VAL)
    k = (len(ids) - 1) // t
    x = ids[: k * t].reshape(k, t)
    y = ids[1 : k * t + 1].reshape(k, t)
    z = model.logits(tf.constant(x)).numpy().astype("float64")
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, y[..., None], -1).mean()
    assert math.isclose(m["val_loss"], ref, rel_tol=1e-4)
    assert math.isclose(m["val_bits_per_char"], m["val_loss"] / math.log(2), rel_tol=1e-9)
    assert math.isclose(m["val_perplexity"], math.exp(m["val_loss"]), rel_tol=1e-9)
    # An untrained model is close to uniform over the vocabulary.
    assert abs(m["val_loss"] - math.log(model.codec.size)) < 0.5

    assert result.images == {}
    assert set(result.texts) == {"sample", "continuation"}
    assert result.texts["continuation"].startswith(VAL[: t // 2])
    assert len(result.texts["sample"]) == 1 + 500
    assert evaluate(model, data, seed=0).texts == result.texts  # deterministic


def test_metrics_from_loss_units():
    m = metrics_from_loss("val", math.log(2) * 1.5)
    assert math.isclose(m["val_bits_per_char"], 1.5)
    assert math.isclose(m["val_perplexity"], 2**1.5)
