"""`genpipe images build|push`: builder choice, the build command, CA certificates as a secret.

The podman path is exercised for real by tests/images/test_containers.py; here the parts that
decide what runs (argv per builder, input checks) and the refusals, which need no build.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_cli

from genpipe.ops import images_build as ib
from zoo.errors import ConfigError, GenpipeError

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("builder", ["docker", "podman", "buildah"])
def test_build_command_passes_ca_as_secret_and_base_as_build_arg(builder, tmp_path, monkeypatch):
    monkeypatch.delenv("BUILDAH_ISOLATION", raising=False)
    (tmp_path / "a.crt").write_text(PEM)
    (tmp_path / "b.crt").write_text(PEM.replace("MIIB", "MIIC"))
    bundle = ib._ca_bundle([tmp_path / "a.crt", tmp_path / "b.crt"], tmp_path)
    assert bundle is not None and bundle.read_text().count("BEGIN CERTIFICATE") == 2
    assert os.stat(bundle).st_mode & 0o777 == 0o600
    argv = ib.build_command(
        builder,
        "images/Dockerfile.cpu",
        "reg/gp:1-cpu",
        {"BASE_IMAGE": "localhost/base:x", "GENPIPE_VERSION": "1"},
        tmp_path / "iid",
        bundle,
    )
    assert argv[-1] == "."
    assert argv[argv.index("-f") + 1] == "images/Dockerfile.cpu"
    assert argv[argv.index("-t") + 1] == "reg/gp:1-cpu"
    assert argv[argv.index("--secret") + 1] == f"id=extra_ca,src={bundle}"
    assert "BASE_IMAGE=localhost/base:x" in argv
    # The certificates travel as a secret only: never as a build arg (args land in the image
    # history).
    assert not [a for a in argv if "MIIB" in a]
    if builder == "docker":
        assert argv[:2] == ["docker", "build"] and "--isolation" not in argv
    else:
        assert argv[argv.index("--isolation") + 1] == "chroot" and "--layers" in argv


def test_ca_cert_must_be_a_readable_pem(tmp_path):
    (tmp_path / "x.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"x\.crt: not a PEM certificate"):
        ib._ca_bundle([tmp_path / "x.crt"], tmp_path)
    with pytest.raises(ConfigError, match=r"missing\.crt: cannot read it"):
        ib._ca_bundle([tmp_path / "missing.crt"], tmp_path)
    assert ib._ca_bundle([], tmp_path) is None


def test_builder_choice(monkeypatch):
    with pytest.raises(ConfigError, match="--builder 'kaniko' is not one of auto, docker"):
        ib.detect_builder("kaniko")
    # A docker CLI without an engine behind it is no builder.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing listens on discard
    if shutil.which("docker"):
        with pytest.raises(GenpipeError, match=r"no image builder found \(tried docker\)"):
            ib.detect_builder("docker")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GenpipeError, match="tried docker, podman, buildah"):
        ib.detect_builder("auto")


def test_content_hash_follows_the_context_and_the_base(tmp_path):
    a = ib.content_hash("cpu", "sha256:base1")
    assert a == ib.content_hash("cpu", "sha256:base1")
    assert a != ib.content_hash("cpu", "sha256:base2")
    assert a != ib.content_hash("gpu", "sha256:base1")
    files = {str(p.relative_to(ib.source_root())) for p in ib.context_files(ib.source_root())}
    assert "genpipe/ops/images_build.py" in files and "pyproject.toml" in files
    assert not [f for f in files if f.startswith(("tests/", ".git/")) or "__pycache__" in f]


def genpipe(args: list[str], capsys) -> tuple[int, str]:
    """`genpipe ARGS` in-process: (exit code, stdout + stderr)."""
    code, out, err = run_cli(args, capsys)
    return code, out + err


def test_cli_refuses_bad_input_before_building(monkeypatch, tmp_path, capsys):
    code, out = genpipe(["images", "build", "--variant", "tpu"], capsys)
    assert code == 1 and "'tpu' is not one of cpu, gpu" in out
    code, out = genpipe(["images", "build", "--variant", "cpu", "--version", "latest"], capsys)
    assert code == 1 and "latest" in out
    if not (Path(ib.source_root()) / "images" / "Dockerfile.serving").exists():
        code, out = genpipe(["images", "build", "--variant", "serving"], capsys)
        assert code == 1 and "'serving' is not one of cpu, gpu, all" in out
    (tmp_path / "x.crt").write_text("nope")
    code, out = genpipe(
        ["images", "build", "--variant", "cpu", "--ca-cert", str(tmp_path / "x.crt")], capsys
    )
    assert code == 1 and "not a PEM certificate" in out
    monkeypatch.setenv("PATH", "/nonexistent")
    code, out = genpipe(["images", "push", "--variant", "cpu"], capsys)
    assert code == 1 and "no image builder found" in out
