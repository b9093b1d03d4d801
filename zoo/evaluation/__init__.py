"""Held-out evaluation, dispatched by model family (image / text), in one place.

`evaluate(model, data)` returns the metrics (named `<split>_<metric>`, e.g. test_neg_elbo),
figures and sample texts that the evaluate component logs, reports and blesses on. The
champion is re-scored with the very same function, on the very same data.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np

FAMILIES = {"image": "zoo.evaluation.image", "text": "zoo.evaluation.text"}


@dataclasses.dataclass
class Evaluation:
    #: held-out metrics, prefixed with the split name ("test_neg_elbo", "val_bits_per_char")
    metrics: dict[str, float]
    #: report figures: name -> [N, H, W, C] float images in [0, 1], shown as one grid each
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: report texts: name -> generated text
    texts: dict[str, str] = dataclasses.field(default_factory=dict)


def evaluate(model: Any, data: Any, seed: int = 0) -> Evaluation:
    """Evaluate a trained zoo model on its held-out split of a fetched dataset."""
    module = importlib.import_module(FAMILIES[model.family])
    return module.evaluate(model, data, seed=seed)
