"""Run every benchmark, one at a time, and collect their tables in bench/results/summary.md.

    python bench/run_all.py [--quick] [--only train,input,serve,overhead]

Each benchmark runs in its own process (a fresh TensorFlow: no graph or thread-pool state
carried from one to the next) and writes bench/results/<name>.json and .md; this script
prints and concatenates the tables. `--quick` shrinks every benchmark for a smoke run
(figures are then not meaningful). Nothing is downloaded. A failing benchmark is reported
and the others still run; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

BENCHES = {
    "train": (["bench_train.py"], ["--steps", "3", "--epochs", "2", "--models", "vae"]),
    "input": (["bench_input.py"], ["--passes", "2"]),
    "serve": (["bench_serve.py"], ["--requests", "20"]),
    "overhead": (
        ["bench_pipeline_overhead.py"],
        ["--set", "epochs=1", "--set", "steps_per_epoch=5"],
    ),
}
RESULT_NAMES = {
    "train": "train",
    "input": "input",
    "serve": "serve",
    "overhead": "pipeline_overhead",
}
TITLES = {
    "train": "Training throughput: our trainer vs plain Keras fit",
    "input": "Input pipeline throughput",
    "serve": "Serving latency (16 samples)",
    "overhead": "Pipeline overhead of `genpipe run`",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; valid: {', '.join(BENCHES)}")
    failed = []
    sections = []
    for name in names:
        script, quick_args = BENCHES[name]
        cmd = [sys.executable, str(HERE / script[0]), *(quick_args if args.quick else [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        md = RESULTS / f"{RESULT_NAMES[name]}.md"
        if rc != 0 or not md.is_file():
            failed.append(name)
            continue
        sections.append(f"## {TITLES[name]}\n\n{md.read_text()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = RESULTS / "summary.md"
    summary.write_text("# genpipe benchmarks\n\n" + "\n".join(sections))
    print(f"\nsummary: {summary}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
