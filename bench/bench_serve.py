"""Benchmark: serving latency p50/p99 of a 16-sample generate request on a VAE.

    python bench/bench_serve.py [--requests 200]

The VAE (default config, built on the MNIST shape) is saved and loaded back through
zoo.train.load_model (what the pyfunc wrapper and `genpipe serve` load), then:

  in-process  zoo.serving.generate_from_request(model, {"n": 16, "seed": i})
  HTTP        POST /v1/generate {"n": 16, "seed": i, "format": "json"|"png"} to genpipe.ops.server on
              127.0.0.1 (when genpipe/ops/server.py exists), one client, keep-alive connection

Latency does not depend on the weights, so the model is not trained. Writes
bench/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, md_table, quiet_tf, write_results  # noqa: E402


def _stats(lat_s: list[float]) -> dict[str, float]:
    a = np.asarray(lat_s) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": len(a),
    }


def _load_vae(tmp: Path) -> Any:
    from zoo import models
    from zoo.train import load_model, write_model_config

    cfg = models.resolve_config("vae", "default")
    spec = {"shape": [28, 28, 1], "num_classes": 10}
    model = models.get("vae")(cfg, spec)
    model.build_model()
    out = tmp / "model"
    out.mkdir()
    model.save(out / "model.keras")
    write_model_config(out, "vae", cfg, spec, {"fingerprint": "bench", "uri": None})
    loaded, _ = load_model(out)
    return loaded


def run(requests: int, warmup: int = 10) -> dict[str, Any]:
    from zoo.serving import generate_from_request

    rows = []
    with tempfile.TemporaryDirectory(prefix="genpipe-bench-serve-") as tmp:
        model = _load_vae(Path(tmp))
        for i in range(warmup):
            generate_from_request(model, {"n": 16, "seed": i})
        lat = []
        for i in range(requests):
            t0 = time.perf_counter()
            out = generate_from_request(model, {"n": 16, "seed": i})
            lat.append(time.perf_counter() - t0)
        assert out.shape == (16, 28, 28, 1)
        rows.append({"path": "in-process generate_from_request", **_stats(lat)})
        try:
            from genpipe.ops import server
        except ImportError:
            server = None
        if server is not None:
            srv = server.serve(model, {"model": "vae", "version": "bench"}, port=0)
            thread = threading.Thread(target=srv.serve_forever, daemon=True)
            thread.start()
            try:
                host, port = srv.server_address[:2]
                for fmt in ("json", "png"):
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                    lat = []
                    for i in range(warmup + requests):
                        body = json.dumps({"n": 16, "seed": i, "format": fmt})
                        t0 = time.perf_counter()
                        conn.request(
                            "POST", "/v1/generate", body, {"Content-Type": "application/json"}
                        )
                        resp = conn.getresponse()
                        payload = resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}: {payload[:200]!r}")
                        if i >= warmup:
                            lat.append(time.perf_counter() - t0)
                    conn.close()
                    rows.append({"path": f"HTTP POST /v1/generate ({fmt})", **_stats(lat)})
            finally:
                srv.shutdown()
                srv.server_close()
    return {"machine": machine(), "samples_per_request": 16, "rows": rows}


def table(result: dict[str, Any]) -> str:
    body = [[r["path"], r["p50_ms"], r["p99_ms"], r["mean_ms"], r["n"]] for r in result["rows"]]
    m = result["machine"]
    return md_table(["path (16 samples)", "p50 ms", "p99 ms", "mean ms", "requests"], body) + (
        f"\nVAE default config (28x28x1); {m['cpus']} CPUs, load avg {m['load_avg_1m']:.1f}, "
        f"{m['when']}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args(argv)
    result = run(args.requests)
    md = table(result)
    out = write_results("serve", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
