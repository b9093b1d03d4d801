"""`genpipe pull` and `genpipe serve` through the warm server (pipelines.warm_calls): the same
result as in-process, the CLI process imports neither TensorFlow nor MLflow, only the MLflow
URI is needed (no S3 credentials), `serve`'s output reaches the user, and Ctrl-C or the CLI
going away stops the server's fork that serves (issue 14)."""

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from model_helpers import tiny_vae_dir
from proc_helpers import default_sigint

from genpipe.ops.server import render
from pipelines import warm
from zoo import registration, tracking
from zoo.serving import generate_from_request
from zoo.train import load_model

#: what a laptop pointed at a cluster's MLflow (port-forward) does not have
S3_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GENPIPE_S3_ENDPOINT")


@pytest.fixture(scope="module")
def registered(stack, tmp_path_factory) -> str:
    """A tiny (untrained) VAE registered as NAME v1 @champion, and the state dir's server."""
    tmp = tmp_path_factory.mktemp("warm-calls")
    model_dir = tiny_vae_dir(tmp, {"fingerprint": "f" * 64, "uri": "s3://b/m"})
    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-warm-calls", uuid.uuid4().hex, "vae")
    registration.log_model(c, run_id, model_dir)
    name = f"vae-wcall-{uuid.uuid4().hex[:8]}"
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})
    # the key of a server `genpipe up` starts: the CLI sets TF_CPP_MIN_LOG_LEVEL before anything
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    assert warm.start_in_background(stack.state_dir)
    return name


def _env(stack, warm_on: bool) -> dict[str, str]:
    """The CLI's environment: the MLflow URI and login only; warm tasks on or off."""
    if warm_on:  # (re)start it: the tests' idle timeout (60 s) may have passed meanwhile
        assert warm.start_in_background(stack.state_dir)
    env = {k: v for k, v in os.environ.items() if k not in S3_VARS}
    env.update(GENPIPE_HOME=str(stack.state_dir), GENPIPE_WARM_TASKS="1" if warm_on else "0")
    return env


def _cli(args: list[str]) -> list[str]:
    """`genpipe ARGS`; -X importtime lists every module the CLI process imports (stderr)."""
    return [sys.executable, "-X", "importtime", "-m", "genpipe", *args]


def _imported(stderr: str) -> set[str]:
    """Top-level packages in -X importtime's output ('import time: ... | pkg.mod')."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("import time:")]


def test_warm_pull_writes_the_same_files_without_importing_tensorflow_or_mlflow(
    stack, registered, tmp_path
):
    args = ["pull", f"{registered}@champion", "-o"]
    hot = subprocess.run(
        _cli([*args, "hot"]), capture_output=True, text=True, timeout=300,
        env=_env(stack, True), cwd=tmp_path,
    )  # fmt: skip
    assert hot.returncode == 0, hot.stderr[-3000:]
    assert not {"tensorflow", "keras", "mlflow"} & _imported(hot.stderr)
    cold = subprocess.run(
        _cli([*args, str(tmp_path / "cold")]), capture_output=True, text=True, timeout=300,
        env=_env(stack, False), cwd=tmp_path,
    )  # fmt: skip
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert "mlflow" in _imported(cold.stderr)  # the fallback really ran here
    assert hot.stdout.splitlines()[0] == f"pulled {registered} v1 (champion) -> hot"
    assert hot.stdout.splitlines()[1:] == cold.stdout.splitlines()[1:]  # source, storage URI
    for name in ("model.keras", "config.json"):
        assert (tmp_path / "hot" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()

    missing = subprocess.run(
        _cli(["pull", f"{registered}@nope", "-o", "x"]), capture_output=True, text=True,
        timeout=300, env=_env(stack, True), cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 1
    assert len(_errors(missing.stderr)) == 1 and "has no alias 'nope'" in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        conn.close()


def _refused(port: int, seconds: float = 15.0) -> bool:
    """Whether nothing listens on `port` any more (within `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


class _Serve:
    """`genpipe serve` as a user runs it: stdout read line by line as it comes."""

    def __init__(self, stack, ref: str, port: int, cwd: Path) -> None:
        self.err = (cwd / f"serve-{port}.err").open("w+")
        self.proc = subprocess.Popen(
            _cli(["serve", ref, "--port", str(port)]),
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env=_env(stack, True),
            cwd=cwd,
            preexec_fn=default_sigint,  # Ctrl-C must work even if this suite ignores SIGINT
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_line(self, prefix: str, seconds: float = 120.0) -> str:
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line:\n{self.stderr()[-3000:]}") from None
            if line.startswith(prefix):
                return line

    def stderr(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.err.close()


def test_warm_serve_answers_and_ctrl_c_stops_it(stack, registered, tmp_path):
    port = _free_port()
    serve = _Serve(stack, f"{registered}@champion", port, tmp_path)
    try:
        line = serve.wait_line("serving ")
        assert line.strip() == (
            f"serving {registered} v1 on http://127.0.0.1:{port} (Ctrl-C stops)"
        )
        assert serve.wait_line("  curl").strip() == f"curl -s http://127.0.0.1:{port}/healthz"
        status, _, body = _request(port, "GET", "/healthz")
        health = json.loads(body)
        assert status == 200 and (health["model"], health["version"]) == (registered, "1")
        status, ctype, png = _request(port, "POST", "/v1/generate", b'{"n": 4, "seed": 3}')
        assert (status, ctype) == (200, "image/png")
        # the very model of the registry, as a pull gets it
        pulled = tmp_path / "pulled"
        registration.download_model_dir(tracking.client(), registered, "1", pulled)
        model, _ = load_model(pulled)
        assert png == render(generate_from_request(model, {"n": 4, "seed": 3}), "png")[1]

        serve.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert serve.proc.wait(timeout=30) == 0
        assert _refused(port), "the server's fork kept serving after Ctrl-C"
        assert not {"tensorflow", "keras", "mlflow"} & _imported(serve.stderr())
        assert _errors(serve.stderr()) == []
    finally:
        serve.close()


def test_warm_serve_stops_when_the_cli_goes_away(stack, registered, tmp_path):
    port = _free_port()
    serve = _Serve(stack, registered, port, tmp_path)
    try:
        serve.wait_line("serving ")
        assert _request(port, "GET", "/healthz")[0] == 200
        serve.proc.kill()  # no chance to say goodbye: the server sees the connection close
        serve.proc.wait(timeout=30)
        assert _refused(port), "the server's fork outlived the CLI"
    finally:
        serve.close()


def test_warm_serve_errors_are_one_line(stack, registered, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            _cli(["serve", registered, "--port", str(port)]), capture_output=True, text=True,
            timeout=300, env=_env(stack, True), cwd=tmp_path,
        )  # fmt: skip
    assert out.returncode == 1
    errors = _errors(out.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert not {"tensorflow", "mlflow"} & _imported(out.stderr)
