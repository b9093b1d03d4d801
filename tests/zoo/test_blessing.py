"""Blessing: absolute thresholds, champion comparison with tolerance, parsing errors."""

import pytest

from zoo.blessing import decide, parse_thresholds
from zoo.errors import ConfigError

DEFAULTS = {"test_neg_elbo": ("max", 250.0)}


def test_thresholds_merge_and_disable():
    t = parse_thresholds('{"test_kl": {"min": 1}}', DEFAULTS)
    assert t == {"test_neg_elbo": ("max", 250.0), "test_kl": ("min", 1.0)}
    assert parse_thresholds('{"test_neg_elbo": null}', DEFAULTS) == {}
    assert parse_thresholds("", DEFAULTS) == DEFAULTS


@pytest.mark.parametrize(
    "text",
    [
        '{"test_neg_elbo": 3}',
        '{"test_neg_elbo": {"below": 3}}',
        "[1]",
        "{oops",
        '{"x": {"max": "a"}}',
    ],
)
def test_bad_thresholds_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_thresholds(text, DEFAULTS)


def test_first_model_passing_thresholds_becomes_champion():
    b = decide({"test_neg_elbo": 120.0}, DEFAULTS, "test_neg_elbo", True)
    assert b.blessed and b.better_than_champion


def test_threshold_failure_blocks():
    b = decide({"test_neg_elbo": 300.0}, DEFAULTS, "test_neg_elbo", True)
    assert not b.blessed and not b.better_than_champion
    assert any("FAIL" in r for r in b.reasons)


def test_missing_or_nan_metric_blocks():
    assert not decide({}, DEFAULTS, "test_neg_elbo", True).blessed
    assert not decide({"test_neg_elbo": float("nan")}, {}, "test_neg_elbo", True).blessed


def test_champion_comparison_lower_is_better():
    better = decide({"test_neg_elbo": 100.0}, DEFAULTS, "test_neg_elbo", True, 110.0, "3", 0.0)
    assert better.blessed and better.better_than_champion
    within = decide({"test_neg_elbo": 110.5}, DEFAULTS, "test_neg_elbo", True, 110.0, "3", 0.01)
    assert within.blessed and not within.better_than_champion
    worse = decide({"test_neg_elbo": 120.0}, DEFAULTS, "test_neg_elbo", True, 110.0, "3", 0.01)
    assert not worse.blessed and not worse.better_than_champion


def test_champion_comparison_higher_is_better():
    b = decide({"acc": 0.9}, {}, "acc", False, 0.8, "1")
    assert b.blessed and b.better_than_champion
    assert not decide({"acc": 0.7}, {}, "acc", False, 0.8, "1").blessed


def test_negative_tolerance_rejected():
    with pytest.raises(ConfigError, match="champion_tolerance"):
        decide({"m": 1.0}, {}, "m", True, 1.0, "1", -0.1)
