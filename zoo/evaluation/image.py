"""Image-model evaluation: exact held-out likelihood terms and report figures."""

from __future__ import annotations

from typing import Any

from zoo.evaluation import Evaluation


def evaluate(model: Any, data: Any, seed: int = 0) -> Evaluation:
    from zoo.data import load_split_arrays
    from zoo.train import evaluate_split

    split = model.heldout_split
    metrics = {f"{split}_{k}": v for k, v in evaluate_split(model, data, split).items()}
    x, _ = load_split_arrays(data, split)
    figures = model.report_images(x[:64].astype("float32") / 255.0, seed=seed)
    return Evaluation(metrics=metrics, images=figures)
