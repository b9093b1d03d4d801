"""`genpipe images build | push`: the component images (CPU, GPU, serving) as
REPOSITORY:VERSION-VARIANT, built with a Docker engine, podman or buildah (genpipe.ops.images_build)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

import zoo
from zoo.errors import ConfigError
from zoo.refs import check_image

out = Console(soft_wrap=True)  # long tags and ids stay on one line
err = Console(stderr=True, soft_wrap=True)

IMAGE_VARIANTS = ("cpu", "gpu", "serving")
DEFAULT_REPOSITORY = "ghcr.io/genpipe/genpipe"


def image_tag(repository: str, variant: str, version: str = "") -> str:
    """REPOSITORY:VERSION-VARIANT, refused unless pinned (never `latest`)."""
    if variant not in IMAGE_VARIANTS:
        raise ConfigError(f"image variant {variant!r} is not one of {', '.join(IMAGE_VARIANTS)}")
    version = version or zoo.__version__
    if version == "latest":
        raise ConfigError("--version latest: pin a version so runs are reproducible")
    return check_image(f"{repository}:{version}-{variant}", "--repository")


def _variants(variant: str) -> list[str]:
    from genpipe.ops.images_build import variants

    have = variants()
    if variant == "all":
        return have
    if variant not in have:
        raise ConfigError(f"--variant {variant!r} is not one of {', '.join([*have, 'all'])}")
    return [variant]


def register(app: typer.Typer) -> None:
    """Add the `images` group to the `genpipe` app."""
    images = typer.Typer(
        help="Build or push the component images (Docker engine, podman or buildah).",
        no_args_is_help=True,
    )
    app.add_typer(images, name="images")
    builder_opt = typer.Option(
        "auto",
        help="auto (a reachable Docker engine, else podman, else buildah), docker, podman, buildah.",
    )

    @images.command("build")
    def images_build(
        variant: str = typer.Option("all", help="cpu, gpu, serving or all."),
        repository: str = typer.Option(
            DEFAULT_REPOSITORY, help="Image repository (registry/name)."
        ),
        version: str = typer.Option("", help=f"Tag version (default {zoo.__version__})."),
        base_image: str = typer.Option(
            "",
            "--base-image",
            help="Base image (default: the Dockerfile's, python:3.11-slim-bookworm pinned by digest).",
        ),
        ca_cert: list[Path] = typer.Option(
            [],
            "--ca-cert",
            help="Extra CA certificate (PEM) for downloads during the build, e.g. a proxy's; repeatable. A build secret: no image layer keeps it.",
        ),
        builder: str = builder_opt,
        push: bool = typer.Option(False, "--push", help="Push after building."),
    ) -> None:
        """Build images/Dockerfile.{cpu,gpu,serving} as REPOSITORY:VERSION-VARIANT."""
        from genpipe.ops.images_build import build_image, detect_builder, push_image

        chosen = _variants(variant)
        tags = [image_tag(repository, v, version) for v in chosen]  # refuse before building
        tool = detect_builder(builder)
        for v, tag in zip(chosen, tags, strict=True):
            image_id = build_image(
                v,
                tag,
                builder=tool,
                version=version or zoo.__version__,
                base_image=base_image,
                ca_certs=ca_cert,
                on_log=lambda line: err.print(line, highlight=False, markup=False),
            )
            out.print(f"built {tag} ({image_id}) with {tool}")
            if push:
                push_image(tool, tag, on_log=lambda line: err.print(line, highlight=False))
                out.print(f"pushed {tag}")

    @images.command("push")
    def images_push(
        variant: str = typer.Option("all", help="cpu, gpu, serving or all."),
        repository: str = typer.Option(
            DEFAULT_REPOSITORY, help="Image repository (registry/name)."
        ),
        version: str = typer.Option("", help=f"Tag version (default {zoo.__version__})."),
        builder: str = builder_opt,
    ) -> None:
        """Push REPOSITORY:VERSION-VARIANT (log in with `docker login` / `podman login` first)."""
        from genpipe.ops.images_build import detect_builder, push_image

        tags = [image_tag(repository, v, version) for v in _variants(variant)]
        tool = detect_builder(builder)
        for tag in tags:
            push_image(tool, tag, on_log=lambda line: err.print(line, highlight=False))
            out.print(f"pushed {tag}")
