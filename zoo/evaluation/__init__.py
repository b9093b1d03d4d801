"""Held-out evaluation, dispatched by model family (image / text), in one place.

`evaluate(model, data)` returns the metrics (named `<split>_<metric>`, e.g. test_neg_elbo),
figures and sample texts that the evaluate component logs, reports and blesses on. The
champion is re-scored with the very same function, on the very same data, unless its own
recorded evaluation has the same `evaluation_key` (then re-scoring would repeat it exactly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
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
    #: what else the metrics depend on besides the model, data, seed and code (the image
    #: family: sample count, feature extractor); None: not reproducible, never reused
    key_parts: dict[str, Any] | None = dataclasses.field(default_factory=dict)


def evaluation_key(
    model: str, fingerprint: str, split: str, seed: int, code: str, parts: dict[str, Any] | None
) -> str:
    """sha256 of everything a held-out evaluation's metrics depend on besides the weights:
    the model family, the dataset (fingerprint) and split, the seed, the code (`code`: the
    run's zoo.unchanged.code_version), the numeric libraries' versions and `parts`.

    Two evaluations of the same model file with equal keys give the same metrics, so a
    champion whose recorded key equals the candidate's need not be re-scored. "" (never
    equal) when the code is unknown or the evaluation is not reproducible (`parts` None).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    if not code or code == "unknown" or parts is None:
        return ""
    blob = {
        "model": model,
        "fingerprint": fingerprint,
        "split": split,
        "seed": seed,
        "code": code,
        "libs": [tf.__version__, keras.__version__, np.__version__],
        "parts": parts,
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(family: str, data: Any, split: str) -> None:
    """Make ready, ahead of `evaluate`, what a `family` model's evaluation of `split` needs
    besides the model (the image family: the decoded splits and the cached feature
    extractor, memoized per process). Thread-safe: the evaluate component runs it beside
    the held-out pass.
    Changes no result: `evaluate` reads the very same memoized objects it would build."""
    module = importlib.import_module(FAMILIES[family])
    if hasattr(module, "prepare"):
        module.prepare(data, split)


def evaluate(model: Any, data: Any, seed: int = 0) -> Evaluation:
    """Evaluate a trained zoo model on its held-out split of a fetched dataset."""
    module = importlib.import_module(FAMILIES[model.family])
    return module.evaluate(model, data, seed=seed)
