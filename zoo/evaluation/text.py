"""Text-model evaluation: exact validation cross-entropy and sample texts.

Metrics (split "val"): `val_loss` = mean cross-entropy in nats per character over the
contiguous windows of the whole held-out split (the blessing metric), `val_bits_per_char`
= val_loss / ln 2 and `val_perplexity` = exp(val_loss) (of the mean, not a mean of
per-window perplexities). Texts: a free sample primed with a line break and a continuation
of the opening of the held-out text, both at temperature 0.8 with a fixed seed.
"""

from __future__ import annotations

import math
from typing import Any

from zoo.evaluation import Evaluation

SAMPLE_CHARS = 500
TEMPERATURE = 0.8


def metrics_from_loss(split: str, loss: float) -> dict[str, float]:
    """The reported metrics of a mean cross-entropy in nats/char."""
    return {
        f"{split}_loss": loss,
        f"{split}_bits_per_char": loss / math.log(2),
        f"{split}_perplexity": math.exp(loss),
    }


def evaluate(model: Any, data: Any, seed: int = 0) -> Evaluation:
    from zoo.data import text_split
    from zoo.train import evaluate_split

    split = model.heldout_split
    loss = evaluate_split(model, data, split)["loss"]
    # Prime with the first line(s) of held-out text, at most half the context.
    opening = text_split(data, split)[: max(1, model.context_length // 2)]
    texts = {
        "sample": model.generate("\n", SAMPLE_CHARS, TEMPERATURE, seed=seed),
        "continuation": model.generate(opening, SAMPLE_CHARS, TEMPERATURE, seed=seed),
    }
    return Evaluation(metrics=metrics_from_loss(split, loss), texts=texts)
