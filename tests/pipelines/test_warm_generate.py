"""`genpipe generate` through the warm server: the same bytes as in-process for the same seed,
and the CLI process itself imports neither TensorFlow nor MLflow (issue 14)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipelines import warm
from zoo import registration, tracking
from zoo.data import fetch, load_source, publish, split
from zoo.models import resolve_config
from zoo.train import Trainer

SHAKESPEARE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
)


def _register(tmp: Path, model: str, source: str, store) -> str:
    """`model` (tiny config) trained for one step on `source` and registered as champion."""
    manifest = publish(split(load_source(source)), store, source=source)
    data = fetch(manifest["uri"], store, tmp / "cache")
    cfg = resolve_config(model, "tiny", {"epochs": 1, "steps_per_epoch": 1})
    res = Trainer(model, cfg, data, tmp / "work").run()
    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-warm-gen", uuid.uuid4().hex, model)
    registration.log_model(c, run_id, res.model_dir)
    name = f"{model.replace('_', '-')}-warm-{uuid.uuid4().hex[:8]}"
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})
    return name


@pytest.fixture(scope="module")
def registered(stack, tmp_path_factory):
    """A tiny VAE and a tiny char_rnn registered in the session stack, and its warm server."""
    from zoo.storage import ObjectStore

    tmp = tmp_path_factory.mktemp("warm-gen")
    store = ObjectStore.from_env()
    text = tmp / "text.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    names = {
        "vae": _register(tmp / "vae", "vae", "digits", store),
        "char_rnn": _register(tmp / "char", "char_rnn", f"text:{text}", store),
    }
    # the key of a server `genpipe up` starts: the CLI sets TF_CPP_MIN_LOG_LEVEL before anything
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    assert warm.start_in_background(stack.state_dir)  # as `genpipe up` does
    return names


def _generate(stack, args: list[str], warm_on: bool, cwd: Path) -> subprocess.CompletedProcess:
    """`genpipe generate ARGS` as a user runs it; -X importtime lists every module it imports."""
    if warm_on:  # (re)start it: the tests' idle timeout (60 s) may have passed meanwhile
        assert warm.start_in_background(stack.state_dir)
    env = {
        **os.environ,
        "GENPIPE_HOME": str(stack.state_dir),
        "GENPIPE_WARM_TASKS": "1" if warm_on else "0",
    }
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "genpipe", "generate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def _in_process_logs(stack) -> set[Path]:
    """The in-process path's logs (quiet_libraries: its fd 2, with -X importtime's lines)."""
    return set((stack.state_dir / "logs").glob("generate-*.log"))


def _imported(stderr: str) -> set[str]:
    """Top-level packages in -X importtime's output ('import time: ... | pkg.mod')."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_warm_generate_writes_the_same_png_without_importing_tensorflow(
    stack, registered, tmp_path
):
    args = [registered["vae"], "-n", "16", "--seed", "7", "-o"]
    before = _in_process_logs(stack)
    hot = _generate(stack, [*args, "warm.png"], True, tmp_path)  # relative: the caller's cwd
    assert hot.returncode == 0, hot.stderr[-3000:]
    assert hot.stdout == "wrote warm.png\n"
    assert not {"tensorflow", "keras", "mlflow"} & _imported(hot.stderr)
    assert _in_process_logs(stack) == before  # nothing loaded here: no in-process log either
    cold = _generate(stack, [*args, str(tmp_path / "cold.png")], False, tmp_path)
    assert cold.returncode == 0, cold.stderr[-3000:]
    # The fallback really ran in-process: its imports went to its log (fd 2 while loading).
    new_logs = _in_process_logs(stack) - before
    assert any("tensorflow" in _imported(p.read_text()) for p in new_logs)
    warm_png, cold_png = (tmp_path / "warm.png").read_bytes(), (tmp_path / "cold.png").read_bytes()
    assert warm_png[:8] == b"\x89PNG\r\n\x1a\n" and warm_png == cold_png
    other = _generate(
        stack, [registered["vae"], "-n", "16", "--seed", "8", "-o", "o.png"], True, tmp_path
    )
    assert other.returncode == 0 and (tmp_path / "o.png").read_bytes() != warm_png


def test_warm_generate_prints_the_same_text(stack, registered, tmp_path):
    args = [registered["char_rnn"], "--prompt", "ROMEO:", "--max-new-tokens", "200", "--seed", "3"]
    before = _in_process_logs(stack)
    hot = _generate(stack, args, True, tmp_path)
    assert _in_process_logs(stack) == before
    cold = _generate(stack, args, False, tmp_path)
    assert hot.returncode == 0 and cold.returncode == 0, (hot.stderr[-2000:], cold.stderr[-2000:])
    assert not {"tensorflow", "keras", "mlflow"} & _imported(hot.stderr)
    assert hot.stdout.startswith("ROMEO:") and len(hot.stdout) == len("ROMEO:") + 200 + 1
    assert hot.stdout == cold.stdout


def test_warm_generate_errors_are_one_line(stack, registered, tmp_path):
    out = _generate(stack, ["no-such-model-w", "-o", "x.png"], True, tmp_path)
    assert out.returncode == 1
    lines = [
        ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("import time:")
    ]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no-such-model-w" in lines[0]
    assert not {"tensorflow", "mlflow"} & _imported(out.stderr)
