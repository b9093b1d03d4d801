"""Blessing: absolute thresholds, champion comparison with tolerance, parsing errors."""

import pytest

from zoo import models
from zoo.blessing import (
    EVAL_BATCH_METRICS,
    check_thresholds,
    decide,
    known_metrics,
    parse_thresholds,
)
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


def test_failures_say_plainly_why_not_blessed():
    b = decide({"test_fid": 61.2}, {"test_fid": ("max", 60.0)}, "test_fid", True)
    assert not b.blessed and b.failures == ["test_fid 61.2 > max 60"]
    b = decide({"test_fid": 50.0}, {}, "test_fid", True, champion_value=40.0, champion_version="3")
    assert b.failures == ["test_fid 50 worse than champion v3 40 by more than the tolerance 0.0%"]
    assert decide({"test_fid": 50.0}, {"test_fid": ("max", 60.0)}, "test_fid", True).failures == []


@pytest.mark.parametrize(
    "model, text, bad",
    [
        ("vae", '{"test_fdi": {"max": 60}}', "test_fdi"),
        ("dcgan", '{"test_neg_elbo": {"max": 100}}', "test_neg_elbo"),
        ("gpt", '{"test_loss": {"max": 2}}', "test_loss"),  # text models hold out "val"
        ("dcgan", '{"test_cond_accuracy_3": {"min": 0.5}}', "test_cond_accuracy_3"),
    ],
)
def test_thresholds_on_metrics_a_model_never_reports_are_refused(model, text, bad):
    with pytest.raises(ConfigError) as e:
        check_thresholds(text, model)
    msg = str(e.value)
    assert f"model {model!r} reports no metric {bad!r}" in msg and "--thresholds" in msg
    for known in known_metrics(model)[:2]:
        assert known in msg


def test_thresholds_on_reported_metrics_are_accepted():
    assert check_thresholds('{"test_kid": {"max": 0.1}}', "dcgan")["test_kid"] == ("max", 0.1)
    assert check_thresholds('{"test_cond_accuracy_3": {"min": 0.5}}', "cgan")
    assert check_thresholds('{"val_perplexity": {"max": 9}}', "char_rnn")
    assert check_thresholds("", "vae") == {"test_neg_elbo": ("max", 250.0)}


@pytest.mark.parametrize("name", models.names())
def test_known_metrics_match_what_each_model_evaluates(name):
    """The table in zoo.blessing against the models themselves: their eval_batch keys."""
    import numpy as np

    from zoo.models.text_common import build_vocab

    cls = models.get(name)
    if cls.family == "text":
        spec = {"shape": None, "num_classes": None, "vocab": build_vocab("abc ROME:")}
        model = cls(models.resolve_config(name, "tiny"), spec)
        model.build_model()
        t = model.context_length
        batch = {"x": np.zeros((2, t), "int64"), "y": np.zeros((2, t), "int64")}
    else:
        model = cls(models.resolve_config(name, "tiny"), {"shape": [28, 28, 1], "num_classes": 10})
        model.build_model()
        batch = {"image": np.zeros((2, 28, 28, 1), "float32"), "label": np.zeros(2, "int64")}
    keys = set(model.eval_batch(batch))
    if cls.family == "text":
        assert keys == {"loss"}
    else:
        assert keys == set(EVAL_BATCH_METRICS[name])
    assert cls.primary_metric in known_metrics(name)
    assert set(cls.default_thresholds) <= set(known_metrics(name))
