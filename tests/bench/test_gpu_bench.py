"""bench/bench_gpu.py on CPU: the dry run's table and JSON, the budget guard, XLA refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_SH = ROOT / "bench" / "gpu.sh"
sys.path.insert(0, str(ROOT / "bench"))

import bench_gpu  # noqa: E402


def _table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header and body rows of the one Markdown table in `stdout`."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return cells[0], cells[1:]


def _run(tmp_path: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`bench/gpu.sh --dry-run ARGS` (what `make bench-gpu ARGS=--dry-run` runs) with this Python."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", str(GPU_SH), "--dry-run", "--json", str(out), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_dry_run_measures_every_variant(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--models", "vae", timeout=600)
    header, rows = _table(proc.stdout)
    assert header == bench_gpu.HEADERS
    assert [r[1] for r in rows] == list(bench_gpu.VARIANTS)  # one row per variant, in order
    on_gpu = "no GPU (CPU only)" not in proc.stdout
    for r in rows:
        assert r[0] == "vae" and r[6] == "samples/s", r
        assert float(r[8].replace(",", "")) > 0, r  # throughput
        assert float(r[9].rstrip("x")) > 0, r  # vs fp32
        assert r[10] == "n/a" if not on_gpu else float(r[10].replace(",", "")) > 0, r
    assert rows[0][9] == "1.00x"
    assert {r[3] for r in rows} == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert {r[5] for r in rows} == {"on", "off"} and {r[4] for r in rows} == {"1", "10"}
    assert {r[2] for r in rows} == {"ours", "fit"}
    # The JSON parses and says the same: a positive figure per variant, nothing skipped.
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["preset"] == "tiny" and not result["stopped"]
    assert [(r["model"], r["variant"]) for r in result["rows"]] == [
        ("vae", v) for v in bench_gpu.VARIANTS
    ]
    assert all(r["value"] > 0 and r["wall_s"] > 0 for r in result["rows"])
    # Every epoch's figure is kept; the reported one leaves out epoch 1 (warm-up).
    for r in result["rows"]:
        assert len(r["per_epoch"]) == result["epochs"] == 2 and min(r["per_epoch"]) > 0, r
        assert r["value"] == pytest.approx(r["per_epoch"][1], rel=0.01, abs=0.1), r
    assert (tmp_path / "gpu.md").read_text().startswith("| model | variant |")
    assert "warm-up" in proc.stdout  # the note says what is excluded


def test_budget_guard_stops_and_prints_what_it_has(tmp_path: Path) -> None:
    # 3 s is less than TensorFlow's import: the worker is killed before any result.
    proc = _run(tmp_path, "--models", "vae,gpt", "--budget-s", "3", timeout=120)
    header, rows = _table(proc.stdout)
    assert header == bench_gpu.HEADERS
    assert [(r[0], r[1]) for r in rows] == [
        (m, v) for m in ("vae", "gpt") for v in bench_gpu.VARIANTS
    ]
    assert rows[-1][8] == "not run (budget)"
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["stopped"] == "budget of 3 s ran out"
    assert result["elapsed_s"] < 60
    assert result["rows"][-1]["skipped"] == "not run (budget)"


def test_xla_refused_by_config_is_reported_not_run(tmp_path: Path) -> None:
    spec = {"steps": 2, "epochs": 2, "preset": "tiny"}
    out = bench_gpu.measure_variant("ddpm", "xla", spec, None, tmp_path, on_gpu=False)
    assert "value" not in out
    assert "jit_compile=True is not supported" in out["na"]
    row = {"model": "ddpm", "variant": "xla", **out}
    md = bench_gpu.table(
        {
            "rows": [row],
            "machine": {},
            "gpu": None,
            "preset": "tiny",
            "steps_per_epoch": 2,
            "epochs": 2,
            "elapsed_s": 1.0,
            "budget_s": 10.0,
            "stopped": "",
        }  # fmt: skip
    )
    _, rows = _table(md)
    assert rows[0][5] == "n/a" and rows[0][8].startswith("n/a: DDPMConfig: jit_compile=True")


_FAKE_WORKER = """
import json, os, sys
spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
print("genpipe-bench-gpu machine " + json.dumps({"tensorflow": "fake", "gpu": None}), flush=True)
for name, variant in spec["jobs"]:
    if variant == "mixed_float16":
        print("out of memory in " + variant, file=sys.stderr, flush=True)
        os._exit(3)
    out = {"model": name, "variant": variant, "unit": "samples/s", "batch": 1, "value": 2.0,
           "precision": "float32", "steps_per_call": 1, "xla": False, "wall_s": 0.1}
    print("genpipe-bench-gpu result " + json.dumps(out), flush=True)
"""


def test_dead_worker_is_restarted_for_the_rest(tmp_path: Path, monkeypatch) -> None:
    # The parent's supervision, with a stand-in worker that dies (like an OOM kill) in one
    # variant per start: that variant gets the exit code and stderr line, the rest still run.
    fake = tmp_path / "fake_worker.py"
    fake.write_text(_FAKE_WORKER)
    monkeypatch.setattr(bench_gpu, "__file__", str(fake))
    result = bench_gpu.run(["vae", "gpt"], 5, 2, 60.0, "tiny", "synthetic")
    rows = {(r["model"], r["variant"]): r for r in result["rows"]}
    assert len(rows) == 2 * len(bench_gpu.VARIANTS) and not result["stopped"]
    for model in ("vae", "gpt"):
        assert (
            rows[(model, "mixed_float16")]["error"]
            == "worker exit 3: out of memory in mixed_float16"
        )
        assert all(
            rows[(model, v)]["value"] == 2.0 for v in bench_gpu.VARIANTS if v != "mixed_float16"
        )
    _, body = _table(bench_gpu.table(result))
    assert [r[8] for r in body if r[1] == "mixed_float16"] == [
        "worker exit 3: out of memory in mixed_float16"
    ] * 2
