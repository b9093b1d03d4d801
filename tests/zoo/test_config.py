"""Typed configs: overrides are type-checked and bad values name the key and what is valid."""

import pytest

from zoo import models
from zoo.config import apply_overrides, parse_overrides
from zoo.errors import ConfigError


def test_overrides_are_typed():
    cfg = models.resolve_config(
        "vae", "default", {"epochs": "3", "learning_rate": "2e-4", "filters": "16,32"}
    )
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.learning_rate == pytest.approx(2e-4)
    assert cfg.filters == (16, 32)


def test_tiny_preset_differs_from_default():
    assert models.resolve_config("vae", "tiny").epochs < models.resolve_config("vae").epochs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": "three"}, "epochs='three' is not an integer"),
        ({"epochs": "0"}, "epochs=0 must be >= 1"),
        ({"learning_rate": "nan"}, "is not a finite number"),
        ({"learning_rate": "-1"}, "learning_rate=-1.0 must be in (0, 10)"),
        ({"epoch": "3"}, "unknown setting(s) 'epoch'"),
        ({"distribution": "tpu"}, "distribution='tpu' is not one of"),
        ({"filters": "a,b"}, "filters='a' is not an integer"),
        ({"precision": "float16"}, "precision='float16' is not one of float32, mixed_float16"),
        ({"steps_per_call": "0"}, "steps_per_call=0 must be >= 1"),
    ],
)
def test_bad_overrides_name_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as e:
        models.resolve_config("vae", "default", overrides)
    assert message in str(e.value)


def test_ddpm_refuses_xla_before_training():
    """XLA cannot compile the U-Net's upsampling gradient: say so, not fail mid-run."""
    with pytest.raises(ConfigError, match="jit_compile=True is not supported.*ResizeNearest"):
        models.resolve_config("ddpm", "default", {"jit_compile": "true"})


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: .*latent_dim"):
        models.resolve_config("vae", "default", {"latnt_dim": "2"})


def test_parse_overrides_requires_key_value():
    assert parse_overrides(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="'epochs' is not key=value"):
        parse_overrides(["epochs"])


def test_unknown_model_and_preset():
    with pytest.raises(ConfigError, match="unknown model 'vea'; registered models: .*vae"):
        models.get("vea")
    with pytest.raises(ConfigError, match="preset 'huge'"):
        models.resolve_config("vae", "huge")


def test_apply_overrides_returns_copy():
    cfg = models.resolve_config("vae")
    new = apply_overrides(cfg, {"epochs": 2})
    assert new.epochs == 2 and cfg.epochs != 2
