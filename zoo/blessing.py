"""Blessing: does a newly trained model pass its absolute thresholds and the current champion?

TFX-style: the evaluator re-scores the champion on the *same* held-out data as the candidate,
so the comparison is fair even when the champion was trained on another dataset version.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    ok = True
    for metric, (op, bound) in sorted(thresholds.items()):
        if metric not in metrics:
            ok = False
            reasons.append(f"{metric}: missing from evaluation (threshold {op} {bound:g})")
            continue
        v = metrics[metric]
        passed = math.isfinite(v) and (v <= bound if op == "max" else v >= bound)
        ok &= passed
        reasons.append(
            f"{metric}={v:.4g} {'<=' if op == 'max' else '>='} {bound:g}: {'pass' if passed else 'FAIL'}"
        )
    value = metrics.get(primary, float("nan"))
    if not math.isfinite(value):
        ok = False
        reasons.append(f"{primary}={value} is not finite")
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
    )
