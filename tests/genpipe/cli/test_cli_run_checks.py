"""`genpipe run` as a user runs it (a real CLI process): arguments that could only fail after
training are refused before anything runs, and a run that is not blessed says why and exits
with its documented code (3), in plain text when the output is not a terminal."""

import os
import subprocess
import sys
import uuid

import pytest

from genpipe.cli.pipeline import NOT_BLESSED_EXIT
from zoo import tracking


def genpipe(*args: str, home, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENPIPE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "genpipe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 1, out
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["--thresholds", '{"test_fdi": {"max": 60}}'],
            ["--thresholds", "model 'vae' reports no metric 'test_fdi'", "test_neg_elbo"],
        ),
        (["--name", "team/vae"], ["--name 'team/vae'", "not a valid registered model name"]),
        (["--name", "vae:v2"], ["--name 'vae:v2'", "':'"]),
        (["--tolerance", "-0.1"], ["--tolerance -0.1 must be a number >= 0"]),
    ],
)
def test_bad_thresholds_and_names_are_refused_before_anything_runs(tmp_path, args, needles):
    home = tmp_path / "home"
    out = genpipe("run", "vae", "--preset", "tiny", *args, home=home, timeout=300)
    _one_line_error(out, *needles)
    # Nothing ran: no stack was started, no pipeline log written.
    assert not (home / "logs").exists() or not list((home / "logs").glob("run-*.log"))
    assert not list(home.glob("**/mlflow.db"))


def test_not_blessed_run_says_why_and_exits_3(stack):
    name = f"vae-nb-{uuid.uuid4().hex[:8]}"
    out = genpipe(
        "run",
        "vae",
        "--preset",
        "tiny",
        "--set",
        "epochs=1",
        "--set",
        "steps_per_epoch=2",
        "--name",
        name,
        "--thresholds",
        '{"test_neg_elbo": {"max": 1}}',
        home=stack.state_dir,
    )
    assert out.returncode == NOT_BLESSED_EXIT == 3, out
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("not blessed: test_neg_elbo ") and last.endswith(" > max 1"), last
    assert "\x1b[" not in out.stdout + out.stderr  # not a terminal: no colour codes
    assert not tracking.client().search_model_versions(f"name='{name}'")
