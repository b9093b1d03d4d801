"""Image-model evaluation: held-out likelihood terms, sample quality and report figures.

Every image model gets, on its held-out split (`test_` prefix):
  * the means of its own per-example `eval_batch` values (likelihood models: `bits_per_dim`
    and `nll`; the VAE: `neg_elbo`), exact over the whole split;
  * sample metrics in the domain feature space (zoo.evaluation.features) of n generated
    samples vs n held-out images (n = `num_samples`, GENPIPE_EVAL_SAMPLES, or the model's
    `eval_samples`, default 1000, capped by the split size): fid, kid, precision, recall;
  * fid_floor / kid_floor: the same metrics for n *real* training images vs the same held-out
    images, the floor that finite samples and this feature space allow (read fid against it);
  * mode-collapse checks from the classifier's predictions on the samples (class entropy in
    bits, max class share, classes covered, total variation to the held-out labels), and for
    conditional models the classifier's accuracy on samples of each requested label
    (`cond_accuracy`, `cond_accuracy_<k>`). Without labels these are skipped and a note says so.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo import blas
from zoo.errors import ConfigError
from zoo.evaluation import Evaluation
from zoo.evaluation import metrics as M

if TYPE_CHECKING:
    from zoo.models.base import GenerativeModel

DEFAULT_SAMPLES = 1000


def _num_samples(model: GenerativeModel, num_samples: int | None) -> int:
    raw = num_samples or os.environ.get("GENPIPE_EVAL_SAMPLES") or model.eval_samples
    n = int(raw or DEFAULT_SAMPLES)
    if n < 4:
        raise ConfigError(f"evaluation samples={n} must be >= 4 (GENPIPE_EVAL_SAMPLES)")
    return n


def sample_metrics(
    model: Any, data: Any, x: np.ndarray, y: np.ndarray, n: int, seed: int = 0
) -> tuple[dict[str, float], list[str]]:
    """Feature-space metrics of n generated samples vs the first n held-out images.

    `model`: a GenerativeModel, or anything with its `conditional` and `generate(n, seed[,
    labels])` (bench/quality_refs.py scores the Keras reference recipes with this too).
    """
    from zoo.evaluation.features import get_extractor, split_arrays

    fe = get_extractor(data)
    n = min(n, len(x))
    x_real, y_real = x[:n], y[:n]
    conditional = bool(model.conditional)
    # Conditional models are asked for the held-out labels: same class mix as the reference.
    gen = (
        model.generate(n, seed=seed, labels=y_real) if conditional else model.generate(n, seed=seed)
    )
    f_real = fe.features(x_real)
    f_gen, pred = fe.features_and_predictions(gen)  # one pass over the samples, not two
    x_train, _ = split_arrays(data, "train")
    pick = np.random.default_rng(seed).choice(len(x_train), min(n, len(x_train)), replace=False)
    f_floor = fe.features(x_train[pick])
    with blas.one_thread():
        out: dict[str, float] = {
            "fid": M.fid(f_gen, f_real),
            "kid": M.kid(f_gen, f_real, seed=seed),
            "eval_samples": float(n),
        }
        out["precision"], out["recall"] = M.precision_recall(f_real, f_gen)
        out["fid_floor"] = M.fid(f_floor, f_real)
        out["kid_floor"] = M.kid(f_floor, f_real, seed=seed)
    notes = [
        f"feature extractor: {fe.kind} ({fe.uri or 'not cached'}), "
        f"held-out accuracy {fe.train_accuracy:.4f}; {n} generated vs {n} held-out images"
    ]
    if not fe.has_classes:
        notes.append("dataset has no labels: class-histogram and per-label checks skipped")
        return out, notes
    out["feature_classifier_accuracy"] = fe.train_accuracy
    out.update({f"gen_{k}": v for k, v in M.histogram_checks(pred, y_real, fe.num_classes).items()})
    if conditional:
        out["cond_accuracy"] = float(np.mean(pred == y_real))
        for k in np.unique(y_real):
            out[f"cond_accuracy_{int(k)}"] = float(np.mean(pred[y_real == k] == k))
    return out, notes


def prepare(data: Any, split: str) -> None:
    """Load the cached feature extractor and decode the train and held-out splits (memoized
    for `evaluate`): what may run in a thread beside `evaluate`'s held-out pass."""
    from zoo.evaluation.features import load_cached_extractor, split_arrays

    load_cached_extractor(data)
    split_arrays(data, split)


def evaluate(
    model: GenerativeModel, data: Any, seed: int = 0, num_samples: int | None = None
) -> Evaluation:
    from zoo.evaluation.features import get_extractor, split_arrays
    from zoo.train import evaluate_split

    split = model.heldout_split
    metrics = {f"{split}_{k}": v for k, v in evaluate_split(model, data, split).items()}
    x, y = split_arrays(data, split)
    n = _num_samples(model, num_samples)
    sm, notes = sample_metrics(model, data, x, y, n, seed=seed)
    metrics.update({f"{split}_{k}": v for k, v in sm.items()})
    figures = model.report_images(x[:64].astype("float32") / 255.0, seed=seed)
    fe = get_extractor(data)  # memoized by sample_metrics
    # The sample metrics also depend on n and on the extractor (content-addressed when
    # cached; an uncached one is retrained per process: not reused).
    parts = {"samples": n, "feature_extractor": fe.uri} if fe.uri else None
    return Evaluation(
        metrics=metrics,
        images=figures,
        texts={"evaluation_notes": "\n".join(notes)},
        key_parts=parts,
    )
