"""bench/bench_quality.py --dry-run: every family trains both sides and is scored finitely.

The dry run uses the tiny configs and tiny recipes for 2 CPU-seconds each, on the real
MNIST t10k / tiny-shakespeare of ../shared/data, and scores with the pipeline's own
functions; it checks the harness (table, JSON, budgets), not the figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_quality.py"
sys.path.insert(0, str(ROOT / "bench"))

import bench_quality  # noqa: E402
import common  # noqa: E402

FAMILIES = ["vae", "cgan", "wgan_gp", "ddpm", "realnvp", "pixelcnn", "char_rnn", "gpt"]

pytestmark = pytest.mark.skipif(
    not (common.MNIST_DIR.is_dir() and common.SHAKESPEARE.is_file()),
    reason="needs ../shared/data (MNIST t10k, tiny-shakespeare)",
)


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return cells[0], cells[1:]


def test_dry_run_every_family_both_sides(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "quality.json").read_text())
    assert payload["dry_run"] is True and payload["budget_cpu_s"] == 2.0
    rows = {r["model"]: r for r in payload["results"]}
    assert list(rows) == FAMILIES
    for name, r in rows.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["metric"] == bench_quality.METRIC[name]
        for side in ("ours", "recipe"):
            s = r[side]
            assert math.isfinite(s["metric"]) and s["metric"] > 0, (name, side, s)
            assert s["steps"] >= 1 and s["cpu_s"] > 0 and s["wall_s"] > 0, (name, side, s)
        assert r["recipe"]["note"].startswith("https://keras.io/examples/generative/")
        assert math.isclose(r["ours_over_recipe"], r["ours"]["metric"] / r["recipe"]["metric"])
        assert r["goal_met"] == (r["better_by"] >= 0.20)
    header, body = _table((tmp_path / "quality.md").read_text())
    assert header[:3] == ["model", "metric (lower is better)", "budget CPU-s"]
    assert "ours / recipe" in header and ">= 20%?" in header
    assert [row[0] for row in body] == FAMILIES
    assert all(len(row) == len(header) and row[-1] in ("yes", "no") for row in body)
    # The printed table is the file's table.
    assert (tmp_path / "quality.md").read_text().strip() in proc.stdout


def test_bad_arguments_name_the_value(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "vae,nope", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown model 'nope'" in proc.stderr and "char_rnn" in proc.stderr


def test_set_overrides_are_checked_before_any_training() -> None:
    # --set configures OUR side of one model; a bad key fails at once, naming it.
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="'nope'"):
        bench_quality.main(["--models", "ddpm", "--set", "nope=1", "--dry-run"])
    with pytest.raises(SystemExit):  # overrides differ per model: one --models only
        bench_quality.main(["--models", "ddpm,vae", "--set", "ema_decay=0.9", "--dry-run"])
    cfg = bench_quality._config("ddpm", False, {"ema_decay": "0.9", "block": "res"})
    assert (cfg.ema_decay, cfg.block) == (0.9, "res")


def test_per_step_cost_skips_the_warm_up_steps() -> None:
    # The first steps after tracing run slower; a slope over all of them read the step cost
    # high and the planned runs used only 66-78 of their 100 CPU-s.
    marks = [(1, 5.0), (2, 5.5), (3, 5.9)] + [(s, 5.9 + 0.1 * (s - 3)) for s in range(4, 41)]
    assert bench_quality._per_step(marks) == pytest.approx(0.1)
    assert bench_quality._per_step([(1, 2.0), (2, 2.1)]) == 1.0  # too few: a safe 1 s/step


def test_ours_plans_from_a_calibration_and_stops_at_the_budget(tmp_path: Path) -> None:
    # A small char_rnn (the default profile, shrunk by overrides) for 12 CPU-s: calibrated on
    # 5% of the budget, planned to spend it, never scored past it (the recipe's limit too).
    small = {"width": "16", "embedding_dim": "8", "nchars": "16", "batch_size": "8"}
    data = common.dataset_for("char_rnn", tmp_path / "data")
    budget = 12.0
    side = bench_quality.run_ours("char_rnn", data, budget, False, 32, tmp_path / "w", small)
    assert "steps planned at" in side.note
    planned = [int(x) for x in side.note.split(" steps")[0].split("x")]
    assert planned[0] * planned[1] > 40  # the budget is spent on steps, not on the plan's margin
    # The cosine follows the CPU seconds and ends inside the budget (then the rate stays at
    # its floor): a cosine by steps ended anywhere between 65% and 100% of a loaded run.
    decay_cpu_s = float(side.note.split("cosine over ")[1].split(" CPU-s")[0])
    assert decay_cpu_s == pytest.approx(budget * bench_quality.BUDGET_DECAY_SHARE, abs=0.5)
    one_step = float(side.note.split(" at ")[1].split(" CPU-s")[0])
    assert side.cpu_s <= budget + 0.5 + 20 * one_step, side
    assert side.steps >= 1 and math.isfinite(side.metric)
