"""zoo.refs: the one model-reference parser and the one image pin rule."""

import pytest

from zoo.errors import ConfigError
from zoo.refs import check_image, parse_model_ref, pin_problem


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("gpt@champion", ("gpt", "champion")),
        ("gpt@candidate", ("gpt", "candidate")),
        ("my-gpt/3", ("my-gpt", "3")),
        ("vae", ("vae", "champion")),
    ],
)
def test_parse_model_ref(ref, expected):
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["gpt@", "@champion", "gpt/latest", "/3"])
def test_parse_model_ref_rejects_malformed(ref):
    with pytest.raises(ConfigError, match="model reference") as e:
        parse_model_ref(ref)
    assert repr(ref) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/genpipe/genpipe:1.2.3-cpu",
        "registry:5000/genpipe:1-gpu",
        "ghcr.io/genpipe/genpipe@sha256:" + "0" * 64,
    ],
)
def test_pinned_images_pass(image):
    assert pin_problem(image) == ""
    assert check_image(image, "--image") == image


@pytest.mark.parametrize(
    "image, why",
    [
        ("ghcr.io/genpipe/genpipe", "has no tag"),
        ("registry:5000/genpipe", "has no tag"),  # the port is not a tag
        ("ghcr.io/genpipe/genpipe:latest", "`latest` moves"),
        ("", "not an image reference"),
        (None, "not an image reference"),
    ],
)
def test_unpinned_images_fail_naming_where(image, why):
    with pytest.raises(ConfigError) as flag:
        check_image(image, "--image")
    assert str(flag.value).startswith(f"--image {image!r}") and why in str(flag.value)
    with pytest.raises(ConfigError) as key:
        check_image(image, "gke.yaml: cpu_image")
    assert str(key.value).startswith(f"gke.yaml: cpu_image: {image!r}")
