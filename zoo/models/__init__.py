"""The model registry: name -> "module:Class". Adding a model costs one file and one line here.

Imports are lazy so that `genpipe --help` and the pipeline compiler do not pay for TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from zoo.errors import ConfigError

if TYPE_CHECKING:
    from zoo.models.base import GenerativeModel

REGISTRY: dict[str, str] = {
    "vae": "zoo.models.vae:VAE",
    "char_rnn": "zoo.models.char_rnn:CharRNN",
    "gpt": "zoo.models.gpt:GPT",
    "dcgan": "zoo.models.dcgan:DCGAN",
    "wgan_gp": "zoo.models.wgan_gp:WGANGP",
    "cgan": "zoo.models.cgan:CGAN",
    "ddpm": "zoo.models.ddpm:DDPM",
    "realnvp": "zoo.models.realnvp:RealNVP",
    "pixelcnn": "zoo.models.pixelcnn:PixelCNN",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def check_name(name: str) -> str:
    """`name` if it is registered, else a ConfigError listing the valid names (no imports)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(names())}")
    return name


def get(name: str) -> type[GenerativeModel]:
    """The model class registered under `name`; a clear error lists the valid names."""
    module, _, cls = REGISTRY[check_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)


PRESETS = ("default", "tiny")


def resolve_config(
    name: str, preset: str = "default", overrides: dict | None = None, where: str = "--set"
):
    """The model's config: a preset (`default` or `tiny`) with typed overrides applied."""
    from zoo import config as cfgmod

    cls = get(name)
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    base = cls.default_config() if preset == "default" else cls.tiny_config()
    return cfgmod.apply_overrides(base, overrides or {}, where=f"{where} ({name})")
