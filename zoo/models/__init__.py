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
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type[GenerativeModel]:
    """The model class registered under `name`; a clear error lists the valid names."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(names())}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
