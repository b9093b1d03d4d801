"""References a user types: a registered model (`NAME@alias`, `NAME/version`) and an image.

One parser and one pin rule, shared by the CLI (`generate`, `pull`, `serve`, `deploy`,
`compile`, `submit`, `run --containers`, `images`) and cluster profiles (`image`, `cpu_image`).
"""

from __future__ import annotations

from typing import Any

import zoo
from zoo.errors import ConfigError

#: the alias `NAME` alone stands for
DEFAULT_ALIAS = "champion"


def parse_model_ref(ref: str) -> tuple[str, str]:
    """'gpt@champion' -> ('gpt', 'champion'); 'gpt/3' -> ('gpt', '3'); 'gpt' -> champion.

    The second item is an alias or a version number (digits); MLflow resolves either.
    """
    if "@" in ref:
        name, _, selector = ref.partition("@")
    elif "/" in ref:
        name, _, selector = ref.rpartition("/")
        if not selector.isdigit():
            raise ConfigError(
                f"model reference {ref!r}: the part after '/' must be a version number, "
                f"e.g. {name or 'NAME'}/3"
            )
    else:
        name, selector = ref, DEFAULT_ALIAS
    if not name or not selector:
        raise ConfigError(
            f"model reference {ref!r} is not NAME, NAME@ALIAS or NAME/VERSION (e.g. gpt@champion)"
        )
    return name, selector


def pin_problem(image: Any) -> str:
    """Why `image` is not pinned ('' when it is): it needs a tag or digest other than latest.

    The text starts with the image, so callers prefix it with where the image came from.
    """
    if not isinstance(image, str) or not image.strip():
        return f"{image!r} is not an image reference, e.g. ghcr.io/genpipe/genpipe:{zoo.__version__}-cpu"
    ref = image.rsplit("/", 1)[-1]  # a registry port (host:5000/name) is not a tag
    if "@" not in ref and ":" not in ref:
        return (
            f"{image!r} has no tag: pin a version, e.g. {image}:{zoo.__version__}-cpu "
            "(never the implicit latest)"
        )
    if ref.endswith(":latest"):
        return f"{image!r}: `latest` moves; pin a version so runs are reproducible"
    return ""


def check_image(image: Any, where: str) -> str:
    """`image` if it is pinned (a tag or digest, never latest); else one-line ConfigError.

    `where` names the source: a flag reads "--image 'x' has no tag ...", anything else
    (a profile key such as "gke.yaml: image") reads "gke.yaml: image: 'x' has no tag ...".
    """
    problem = pin_problem(image)
    if problem:
        raise ConfigError(f"{where} {problem}" if where.startswith("-") else f"{where}: {problem}")
    return image
