"""What surrounds the training loop (zoo.train): the tf.distribute strategy, the model and its
optimizers built for a dataset, and the config.json saved beside the trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from zoo import __version__
from zoo import config as cfgmod
from zoo.errors import DataError
from zoo.models.base import GenerativeModel, TrainConfig, dtype_policy, shared_variable_kernels
from zoo.tfconfig import cluster_info


def make_strategy(distribution: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for a config's `distribution` setting."""
    gpus = tf.config.list_physical_devices("GPU")
    multi = cluster_info().num_workers > 1  # one TF_CONFIG parser (zoo.tfconfig)
    if distribution == "multi_worker" or (distribution == "auto" and multi):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if distribution == "mirrored" or (distribution == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def data_spec_from_manifest(manifest: dict[str, Any], data: Any = None) -> dict[str, Any]:
    """What a model needs to know about its data; text models get the vocabulary built on
    the training split of the fetched dataset `data` (stored with the model)."""
    if manifest.get("kind") == "text":
        from zoo.data import text_split
        from zoo.models.text_common import build_vocab

        if data is None:
            raise DataError("text models need the fetched dataset to build their vocabulary")
        # "shape": None keeps the image-oriented champion comparison working for text.
        return {"shape": None, "num_classes": None, "vocab": build_vocab(text_split(data, "train"))}
    return {"shape": list(manifest["shape"]), "num_classes": manifest.get("num_classes")}


def build_for_training(
    model_cls: type[GenerativeModel], cfg: TrainConfig, data_spec: dict[str, Any]
) -> tuple[GenerativeModel, dict[str, Any]]:
    """The model (layers under the config's precision policy) and its built optimizers;
    under mixed_float16 each optimizer does dynamic loss scaling."""
    with shared_variable_kernels():
        with dtype_policy(cfg.precision):
            model = model_cls(cfg, data_spec)
            model.build_model()
        optimizers = model.make_optimizers()
        if cfg.precision == "mixed_float16":
            # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
            optimizers = {k: keras.optimizers.LossScaleOptimizer(v) for k, v in optimizers.items()}
        # Create the optimizer variables now (inside the caller's strategy scope), not lazily
        # in the first compiled step, and so before a checkpoint restore.
        for opt in optimizers.values():
            opt.build(model.trainable_variables)
    return model, optimizers


def write_model_config(
    out: Path,
    model_name: str,
    cfg: TrainConfig,
    data_spec: dict[str, Any],
    manifest: dict[str, Any],
) -> None:
    (out / "config.json").write_text(
        json.dumps(
            {
                "model": model_name,
                "config": cfgmod.to_dict(cfg),
                "data_spec": data_spec,
                "dataset_fingerprint": manifest["fingerprint"],
                "dataset_uri": manifest.get("uri"),
                "genpipe_version": __version__,
            },
            indent=2,
        )
    )
