"""Blessing: does a newly trained model pass its absolute thresholds and the current champion?

TFX-style: the evaluator re-scores the champion on the *same* held-out data as the candidate,
so the comparison is fair even when the champion was trained on another dataset version (or
takes the champion's recorded value when its evaluation had the same key: components.evaluate).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from zoo.errors import ConfigError

Thresholds = dict[str, tuple[str, float]]


@dataclasses.dataclass
class Blessing:
    blessed: bool
    better_than_champion: bool
    reasons: list[str]
    primary_metric: str
    value: float
    champion_version: str = ""
    champion_value: float | None = None
    #: why it was not blessed, one plain clause each ("test_fid 61.2 > max 60")
    failures: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_thresholds(text: str, defaults: Thresholds, where: str = "thresholds") -> Thresholds:
    """Merge a JSON object {"metric": {"max": v} | {"min": v}} over the model's defaults."""
    if not text or not text.strip():
        return dict(defaults)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f'{where}: {text!r} is not JSON ({e.msg}); expected e.g. {{"test_neg_elbo": {{"max": 200}}}}'
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a JSON object of metric -> {{max|min: value}}, got {text!r}"
        )
    out = dict(defaults)
    for metric, spec in raw.items():
        if spec is None:  # explicitly disable a default threshold
            out.pop(metric, None)
            continue
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("max", "min")):
            raise ConfigError(f'{where}: {metric}={spec!r} must be {{"max": v}} or {{"min": v}}')
        op, value = next(iter(spec.items()))
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}: {metric}.{op}={value!r} is not a finite number")
        out[metric] = (op, float(value))
    return out


#: What each model's `eval_batch` returns per held-out example (zoo/models/*.py);
#: tests/zoo/test_blessing.py checks this table against the models themselves.
EVAL_BATCH_METRICS: dict[str, tuple[str, ...]] = {
    "vae": ("neg_elbo", "recon", "kl"),
    "dcgan": ("d_real_logit",),
    "wgan_gp": ("d_real_logit",),
    "cgan": ("d_real_logit",),
    "ddpm": ("denoise_mse",),
    "realnvp": ("nll", "bits_per_dim"),
    "pixelcnn": ("nll", "bits_per_dim"),
    "char_rnn": ("loss",),
    "gpt": ("loss",),
}
#: zoo.evaluation.image.sample_metrics (class checks and cond_accuracy only with labels)
IMAGE_SAMPLE_METRICS = (
    "fid",
    "kid",
    "eval_samples",
    "precision",
    "recall",
    "fid_floor",
    "kid_floor",
    "feature_classifier_accuracy",
    "gen_class_entropy_bits",
    "gen_class_max_share",
    "gen_classes_covered",
    "gen_class_tv",
)
#: zoo.evaluation.text.metrics_from_loss
TEXT_METRICS = ("loss", "bits_per_char", "perplexity")


def known_metrics(model: str) -> list[str]:
    """The held-out metric names `evaluate` reports for `model` (what thresholds may name).

    Conditional models also report `<split>_cond_accuracy_<label>` per label.
    """
    from zoo import models

    cls = models.get(model)
    split = cls.heldout_split
    if cls.family == "text":
        names = TEXT_METRICS
    else:
        names = EVAL_BATCH_METRICS[model] + IMAGE_SAMPLE_METRICS
        if cls.conditional:
            names += ("cond_accuracy",)
    return [f"{split}_{n}" for n in names]


def check_thresholds(text: str, model: str, where: str = "--thresholds") -> Thresholds:
    """`parse_thresholds` over the model's defaults, refusing metrics the model never reports
    (a misspelt metric would otherwise train fully and then fail the blessing)."""
    from zoo import models

    cls = models.get(model)
    parsed = parse_thresholds(text, cls.default_thresholds, where)
    known = known_metrics(model)
    per_label = re.compile(rf"{cls.heldout_split}_cond_accuracy_\d+")
    conditional = cls.conditional
    for metric in parsed:
        if metric not in known and not (conditional and per_label.fullmatch(metric)):
            raise ConfigError(
                f"{where}: model {model!r} reports no metric {metric!r}; "
                f"its metrics: {', '.join(known)}"
            )
    return parsed


def decide(
    metrics: dict[str, float],
    thresholds: Thresholds,
    primary: str,
    lower_is_better: bool,
    champion_value: float | None = None,
    champion_version: str = "",
    tolerance: float = 0.0,
) -> Blessing:
    """Apply absolute thresholds, then the champion comparison with a relative tolerance."""
    if tolerance < 0:
        raise ConfigError(
            f"champion_tolerance={tolerance} must be >= 0 (a fraction, e.g. 0.01 = 1%)"
        )
    reasons: list[str] = []
    failures: list[str] = []
    for metric, (op, bound) in sorted(thresholds.items()):
        if metric not in metrics:
            failures.append(f"{metric} missing from the evaluation (threshold {op} {bound:g})")
            reasons.append(f"{metric}: missing from evaluation (threshold {op} {bound:g})")
            continue
        v = metrics[metric]
        passed = math.isfinite(v) and (v <= bound if op == "max" else v >= bound)
        if not passed:
            failures.append(f"{metric} {v:.4g} {'>' if op == 'max' else '<'} {op} {bound:g}")
        reasons.append(
            f"{metric}={v:.4g} {'<=' if op == 'max' else '>='} {bound:g}: {'pass' if passed else 'FAIL'}"
        )
    value = metrics.get(primary, float("nan"))
    if not math.isfinite(value):
        failures.append(f"{primary} is {value}")
        reasons.append(f"{primary}={value} is not finite")
    ok = not failures
    better = False
    if champion_value is None:
        better = ok
        reasons.append("no comparable champion: the first blessed model becomes champion")
    else:
        sign = 1.0 if lower_is_better else -1.0
        margin = tolerance * abs(champion_value)
        no_worse = sign * (value - champion_value) <= margin
        better = sign * (value - champion_value) < 0
        ok &= no_worse
        if not no_worse:
            failures.append(
                f"{primary} {value:.4g} worse than champion v{champion_version} "
                f"{champion_value:.4g} by more than the tolerance {tolerance:.1%}"
            )
        reasons.append(
            f"{primary}={value:.4g} vs champion v{champion_version} {champion_value:.4g} "
            f"(tolerance {tolerance:.1%}): {'better' if better else 'within tolerance' if no_worse else 'WORSE'}"
        )
    return Blessing(
        blessed=bool(ok),
        better_than_champion=bool(ok and better),
        reasons=reasons,
        primary_metric=primary,
        value=float(value),
        champion_version=champion_version,
        champion_value=champion_value,
        failures=failures,
    )
