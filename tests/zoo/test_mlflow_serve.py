"""A registered model serves with MLflow's own scoring server: `mlflow models serve`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from model_helpers import tiny_vae

from zoo import registration, tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_mlflow_models_serve_generates_samples(stack, tmp_path):
    model, out = tiny_vae(tmp_path, {"fingerprint": "0" * 64})
    c = tracking.client()
    name = f"vae-mlserve-{uuid.uuid4().hex[:8]}"
    run_id = tracking.get_or_create_run(c, "genpipe-test-mlserve", uuid.uuid4().hex, "vae")
    registration.log_model(c, run_id, out)
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})

    port = _free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "models",
            "serve",
            "-m",
            f"models:/{name}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        # MLflow's scoring server execs `uvicorn` by name: the venv's bin must be on PATH, as
        # it is for a user with the environment activated (CI calls .venv/bin/pytest directly).
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "mlflow models serve did not become ready"
            time.sleep(1)
        status, body = _post(
            f"http://127.0.0.1:{port}/invocations", {"inputs": {"n": 3, "seed": 0}}
        )
        assert status == 200, body
        images = np.asarray(body["predictions"], dtype="float32")
        assert images.shape == (3, 28, 28, 1) and images.min() >= 0.0 and images.max() <= 1.0
        np.testing.assert_allclose(images, model.generate(3, seed=0), atol=1e-5)
        # Oversized requests are refused, not served.
        status, body = _post(
            f"http://127.0.0.1:{port}/invocations", {"inputs": {"n": 100000, "seed": 0}}
        )
        assert status >= 400 and "out of range" in json.dumps(body)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_importing_the_pyfunc_wrapper_prints_no_mlflow_type_hint_warning() -> None:
    """MLflow warns (in red, on stderr) at the definition of a PythonModel whose predict has an
    unsupported `model_input` type hint; every process importing zoo.serving printed it."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import zoo.serving"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Type hint used in the model's predict function" not in proc.stderr, proc.stderr
