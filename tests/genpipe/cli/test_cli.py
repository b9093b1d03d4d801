"""The `genpipe` command line: help, one-line errors with exit code 1, compile output."""

import subprocess
import sys

import yaml


def genpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genpipe", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_commands():
    out = genpipe("--help")
    assert out.returncode == 0
    for cmd in ("up", "down", "status", "env", "run", "compile", "models"):
        assert cmd in out.stdout


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 1, out
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr  # no traceback
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_model_is_one_line_error():
    _one_line_error(genpipe("run", "vea"), "unknown model 'vea'", "vae")


def test_bad_set_values_are_one_line_errors():
    _one_line_error(
        genpipe("run", "vae", "--set", "epochs=zero"), "epochs='zero' is not an integer"
    )
    _one_line_error(genpipe("run", "vae", "--set", "epochs"), "'epochs' is not key=value")
    _one_line_error(genpipe("run", "vae", "--thresholds", "{oops"), "--thresholds", "not JSON")


def test_debug_shows_traceback():
    out = genpipe("--debug", "run", "vea")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_compile_writes_profiled_yaml(tmp_path):
    dest = tmp_path / "vae.yaml"
    out = genpipe("compile", "vae", "-o", str(dest), "--profile", "aks")
    assert out.returncode == 0, out.stderr
    pipeline_spec, platform_spec = list(yaml.safe_load_all(dest.read_text()))
    assert pipeline_spec["pipelineInfo"]["name"] == "genpipe-vae"
    train = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert train["nodeSelector"]["labels"] == {"accelerator": "nvidia"}
    _one_line_error(genpipe("compile", "vae", "-o", str(dest), "--profile", "gcp"), "gcp", "gke")


def test_compile_refuses_unpinned_images(tmp_path):
    dest = tmp_path / "vae.yaml"
    for image in ("ghcr.io/x/genpipe:latest", "ghcr.io/x/genpipe"):
        _one_line_error(genpipe("compile", "vae", "-o", str(dest), "--image", image), image, "pin")
    assert not dest.exists()
    out = genpipe("compile", "vae", "-o", str(dest), "--image", "ghcr.io/x/genpipe:1.2.3-cpu")
    assert out.returncode == 0, out.stderr
    assert "ghcr.io/x/genpipe:1.2.3-cpu" in dest.read_text()
