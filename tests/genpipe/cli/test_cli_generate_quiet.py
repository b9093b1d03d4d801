"""`genpipe generate` (a real CLI process) prints only what was asked for: no TensorFlow C++
start-up lines, no MLflow warnings; those go to the log under the state dir."""

import os
import subprocess
import sys
import uuid

import pytest

from zoo import registration, tracking
from zoo.data import fetch, load_source, publish, split
from zoo.models import resolve_config
from zoo.train import Trainer


@pytest.fixture(scope="module")
def registered_vae(stack, tmp_path_factory):
    """A tiny VAE, trained one step and registered as champion."""
    from zoo.storage import ObjectStore

    tmp = tmp_path_factory.mktemp("gen")
    store = ObjectStore.from_env()
    manifest = publish(split(load_source("digits")), store, source="digits")
    data = fetch(manifest["uri"], store, tmp / "cache")
    cfg = resolve_config("vae", "tiny", {"epochs": 1, "steps_per_epoch": 1})
    res = Trainer("vae", cfg, data, tmp / "work").run()
    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-gen", uuid.uuid4().hex, "vae")
    registration.log_model(c, run_id, res.model_dir)
    name = f"vae-gen-{uuid.uuid4().hex[:8]}"
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})
    return name


def test_generate_prints_only_what_was_asked(stack, registered_vae, tmp_path):
    out_png = tmp_path / "grid.png"
    # In-process (no warm server answers): the path that loads TensorFlow in the CLI itself.
    env = {**os.environ, "GENPIPE_HOME": str(stack.state_dir), "GENPIPE_WARM_TASKS": "0"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a user's shell
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "genpipe",
            "generate",
            registered_vae,
            "-n",
            "4",
            "-o",
            str(out_png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"wrote {out_png}\n"
    assert out.stderr == "", out.stderr
    assert out_png.stat().st_size > 0
    # What was kept out of the output is in the log.
    logs = sorted((stack.state_dir / "logs").glob("generate-*.log"))
    assert logs and any("absl" in p.read_text() or "oneDNN" in p.read_text() for p in logs)


def test_generate_errors_still_reach_the_terminal_as_one_line(stack, tmp_path):
    env = {**os.environ, "GENPIPE_HOME": str(stack.state_dir)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "genpipe",
            "generate",
            "no-such-model-x",
            "-o",
            str(tmp_path / "g.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no-such-model-x" in lines[0]
