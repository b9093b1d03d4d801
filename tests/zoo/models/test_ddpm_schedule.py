"""DDPM noise schedules: the cosine schedule's shape, and saved configs from before the key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zoo import config as cfgmod
from zoo.errors import ConfigError
from zoo.models.ddpm import DDPM, DDPMConfig, make_betas

SPEC = {"shape": [28, 28, 1], "num_classes": 10}


def test_cosine_schedule_matches_its_alpha_bar() -> None:
    cfg = dataclasses.replace(DDPMConfig(), beta_schedule="cosine", timesteps=400)
    betas = make_betas(cfg)
    ab = np.cumprod(1.0 - betas)
    t = np.arange(1, 401) / 400
    want = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    # Equal to the closed form up to the 0.999 clip of the very last steps.
    np.testing.assert_allclose(ab[:-5], want[:-5], rtol=1e-9)
    assert betas.shape == (400,) and 0 < betas[0] < 1e-3 and betas.max() <= 0.999
    assert np.all(np.diff(betas) >= 0) and ab[-1] < 1e-6
    # The linear schedule is still what beta_start/beta_end say.
    lin = make_betas(dataclasses.replace(cfg, beta_schedule="linear"))
    assert lin[0] == cfg.beta_start and lin[-1] == pytest.approx(cfg.beta_end)


def test_saved_config_without_the_key_means_linear() -> None:
    saved = cfgmod.to_dict(DDPMConfig.tiny())
    saved.pop("beta_schedule")  # a model saved before the setting existed
    m = DDPM(saved, SPEC)
    assert m.cfg.beta_schedule == "linear"
    np.testing.assert_allclose(m.betas, np.linspace(1e-4, 0.05, m.cfg.timesteps))
    # A config that names it keeps it.
    m = DDPM({**saved, "beta_schedule": "cosine"}, SPEC)
    np.testing.assert_allclose(m.betas, make_betas(m.cfg))


def test_unknown_schedule_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="beta_schedule='quadratic' is not linear or cosine"):
        dataclasses.replace(DDPMConfig(), beta_schedule="quadratic").validate()
