"""`genpipe serve` / `pull` / `deploy`: the HTTP generation server on a real tiny model, and
end to end against the embedded stack (real MLflow registry, real SeaweedFS artifacts).
"""

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import yaml
from cli_helpers import run_cli
from minio import Minio
from model_helpers import tiny_vae_dir
from PIL import Image

from genpipe.ops.server import MAX_BODY_BYTES, MAX_CONNECTIONS, render, serve
from genpipe.ops.stack import MLFLOW_BUCKET
from zoo import models, registration, tracking
from zoo.settings import Settings
from zoo.train import load_model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model, _ = load_model(tiny_vae_dir(tmp_path_factory.mktemp("srv")))
    srv = serve(model, {"model": "vae-test", "version": "7"}, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(url: str, body: bytes, headers: dict[str, str] | None = None):
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_health_and_png_and_json(server):
    assert server.server_address[0] == "127.0.0.1"  # not exposed unless asked
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok", "model": "vae-test", "version": "7"}
    status, ctype, body = post(f"{server.url}/v1/generate", b'{"n": 4, "seed": 1}')
    assert (status, ctype) == (200, "image/png")
    img = Image.open(io.BytesIO(body))
    img.load()
    # 4 samples -> a 2x2 grid of 28x28 tiles with 1-px padding, upscaled 2x.
    assert img.size == ((2 * 29 + 1) * 2, (2 * 29 + 1) * 2)
    status, ctype, again = post(f"{server.url}/v1/generate", b'{"n": 4, "seed": 1}')
    assert again == body  # seeded: same request, same samples
    status, ctype, body = post(
        f"{server.url}/v1/generate", b'{"n": 3, "seed": 0, "format": "json"}'
    )
    assert (status, ctype) == (200, "application/json")
    data = json.loads(body)
    arr = np.asarray(data["samples"])
    assert data["shape"] == [3, 28, 28, 1] and arr.shape == (3, 28, 28, 1)
    assert arr.min() >= 0.0 and arr.max() <= 1.0


def test_bad_requests_are_4xx_with_a_message(server):
    url = f"{server.url}/v1/generate"
    cases = [
        (b"not json", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"n": 100000}', 400, "out of range [1, 256]"),
        (b'{"n": 2, "format": "gif"}', 400, "format='gif'"),
        (b'{"n": 2, "bogus": 1}', 400, "bad request"),
    ]
    for body, status, needle in cases:
        got, ctype, text = post(url, body)
        assert (got, ctype) == (status, "application/json"), body
        assert needle in json.loads(text)["error"], (body, text)
    got, _, text = post(f"{server.url}/v2/nope", b"{}")
    assert got == 404 and "/v1/generate" in json.loads(text)["error"]
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as r:
        assert r.status == 200  # still healthy after errors


def test_body_limits(server):
    host, port = server.server_address[:2]
    # Announced too large: refused from the header, without reading the body.
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/v1/generate")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]
    conn.close()
    # No Content-Length at all.
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 411")


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 1e400}',
        b'{"n": -1e400}',
        b'{"n": Infinity}',
        b'{"n": -Infinity}',
        b'{"n": NaN}',
        b"[" * 30000 + b"]" * 30000,
        b'{"a":' * 10000 + b"1" + b"}" * 10000,  # 60 kB: under the body limit
        b'{"n": 1' + b"0" * 5000 + b"}",  # an int too long to convert
        b'{"n": 2, "seed": 1e300}',
        b"\xff\xfe",
    ],
    ids=[
        "1e400",
        "-1e400",
        "Infinity",
        "-Infinity",
        "NaN",
        "deep-list",
        "deep-object",
        "long-int",
        "seed-1e300",
        "not-utf8",
    ],
)
def test_hostile_bodies_answer_400_with_a_one_line_json_error(server, body):
    """These dropped the connection (uncaught OverflowError/RecursionError in the handler)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/v1/generate", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        assert (r.status, r.headers["Content-Type"]) == (400, "application/json"), text[:200]
        assert text.count(b"\n") == 0 and list(json.loads(text)) == ["error"]
        assert json.loads(text)["error"]
    finally:
        conn.close()
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as r:
        assert r.status == 200


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory):
    """The same server with a 2 s request deadline, to watch it cut stalled clients off."""
    model, _ = load_model(tiny_vae_dir(tmp_path_factory.mktemp("quick")))
    srv = serve(model, {"model": "vae-test", "version": "7"}, port=0, request_timeout=2.0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cut_off_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed `sock`, and what it said before."""
    started = time.monotonic()
    sock.settimeout(limit)
    said = b""
    while True:
        chunk = sock.recv(4096)  # socket.timeout (a failure) if it is never cut off
        if not chunk:
            return time.monotonic() - started, said
        said += chunk


def test_a_client_that_never_sends_its_body_is_cut_off(quick_server):
    host, port = quick_server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 20\r\n\r\n{"n": '  # ... and nothing more
        )
        waited, said = _cut_off_after(s, 15)
    assert 1.5 < waited < 6, waited
    assert said.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in said
    # half a request head, and a connection that sends nothing at all, likewise
    for start in (b"POST /v1/gen", b""):
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(start)
            waited, said = _cut_off_after(s, 15)
        assert 1.5 < waited < 6 and said.startswith(b"HTTP/1.1 408"), (start, waited, said)


def test_many_idle_connections_cost_no_threads_and_are_cut_off(quick_server):
    host, port = quick_server.server_address[:2]
    with urllib.request.urlopen(f"{quick_server.url}/healthz", timeout=10) as r:
        assert r.status == 200
    before = threading.active_count()
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(300)]
    try:
        time.sleep(0.5)
        assert threading.active_count() <= before + 2  # the old server: one thread each
        # over MAX_CONNECTIONS open: a new request is turned away, not queued behind them
        with pytest.raises(urllib.error.HTTPError) as busy:
            urllib.request.urlopen(f"{quick_server.url}/healthz", timeout=10)
        assert busy.value.code == 503 and MAX_CONNECTIONS < 300
        busy.value.close()
        deadline = time.monotonic() + 15
        for s in idle:  # every one of them is cut off by the request deadline
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        for s in idle:
            s.close()
    with urllib.request.urlopen(f"{quick_server.url}/healthz", timeout=10) as r:
        assert r.status == 200  # and the server serves on
    assert threading.active_count() <= before + 2


def test_render_text_and_non_image_arrays():
    assert render("once upon a time", "png") == ("text/plain; charset=utf-8", b"once upon a time")
    assert render(["a", "b"], "json")[1] == b"a\nb"
    ctype, body = render(np.zeros((2, 3)), "json")
    assert ctype == "application/json" and json.loads(body)["shape"] == [2, 3]
    from zoo.errors import GenpipeError

    with pytest.raises(GenpipeError, match="not images"):
        render(np.zeros((2, 3)), "png")


@pytest.fixture
def registered(stack, tmp_path):
    """A tiny VAE registered in the stack's MLflow as NAME v1 @champion (no training)."""
    c = tracking.client()
    name = f"vae-srv-{uuid.uuid4().hex[:8]}"
    run_id = tracking.get_or_create_run(c, "genpipe-test-server", uuid.uuid4().hex, "vae")
    registration.log_model(c, run_id, tiny_vae_dir(tmp_path))
    registration.register(c, name, run_id, better_than_champion=True, expected_champion="", tags={})
    return name


def test_pull_deploy_resolve_to_the_objects_in_s3(stack, registered, tmp_path, capsys, monkeypatch):
    # A user's laptop has only the tracking URI: artifacts come through the MLflow proxy.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GENPIPE_S3_ENDPOINT"):
        monkeypatch.delenv(key)
    code, out, err = run_cli(["pull", f"{registered}@champion", "-o", str(tmp_path / "m")], capsys)
    assert code == 0, err
    model, meta = load_model(tmp_path / "m")
    assert meta["model"] == "vae" and model.generate(2, seed=0).shape == (2, 28, 28, 1)
    uri = next(line.split()[-1] for line in out.splitlines() if line.startswith("storage URI"))
    assert uri.startswith(f"s3://{MLFLOW_BUCKET}/artifacts/")

    # The mapping is right: the MLflow model (MLmodel file) really is at that S3 location.
    s = Settings.from_env(stack.env)
    s3 = Minio(s.s3_host, access_key=s.access_key, secret_key=s.secret_key, secure=s.s3_secure)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    keys = {o.object_name for o in s3.list_objects(bucket, prefix=prefix + "/", recursive=True)}
    assert f"{prefix}/MLmodel" in keys
    assert any(k.endswith("model.keras") for k in keys)

    code, out, err = run_cli(
        ["deploy", f"{registered}/1", "-n", "team-a", "--profile", "gke"], capsys
    )
    assert code == 0, err
    isvc = yaml.safe_load(out)
    assert isvc["kind"] == "InferenceService" and isvc["metadata"]["namespace"] == "team-a"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == uri
    assert isvc["metadata"]["annotations"]["genpipe.io/version"] == "1"
    # The serving image is CPU-only: a GPU profile adds no GPU, and keeps it off GPU nodes.
    assert "nvidia.com/gpu" not in isvc["spec"]["predictor"]["model"]["resources"]["limits"]
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "genpipe-mlserver"
    avoid = isvc["spec"]["predictor"]["affinity"]["nodeAffinity"]
    assert "cloud.google.com/gke-accelerator" in json.dumps(avoid)

    code, _, err = run_cli(["pull", f"{registered}@nope", "-o", str(tmp_path / "x")], capsys)
    assert code == 1 and "has no alias 'nope'" in err
    code, _, err = run_cli(["deploy", f"{registered}/x"], capsys)
    assert code == 1 and "version number" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_end_to_end(stack, registered, tmp_path):
    """`genpipe serve NAME@champion` as a real process; a real HTTP request returns a PNG."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from genpipe.cli import main; main()",
            "serve",
            f"{registered}@champion",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.5)
        assert health["model"] == registered and health["version"] == "1"
        status, ctype, body = post(f"http://127.0.0.1:{port}/v1/generate", b'{"n": 9, "seed": 3}')
        assert (status, ctype) == (200, "image/png")
        img = Image.open(io.BytesIO(body))
        img.load()
        assert img.size == ((3 * 29 + 1) * 2, (3 * 29 + 1) * 2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_text_model_answers_plain_text(tmp_path):
    """A real (untrained, tiny) GPT behind the server: JSON prompt in, text out."""
    from zoo.models.text_common import build_vocab

    spec = {"shape": None, "num_classes": None, "vocab": build_vocab("ROMEO: hello there\n")}
    model = models.get("gpt")(models.resolve_config("gpt", "tiny"), spec)
    model.build_model()
    srv = serve(model, {"model": "gpt-test", "version": "1"}, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        req = {"prompt": "ROMEO:", "max_new_tokens": 20, "temperature": 0.8, "seed": 3}
        status, ctype, body = post(f"{srv.url}/v1/generate", json.dumps(req).encode())
        assert (status, ctype) == (200, "text/plain; charset=utf-8")
        text = body.decode("utf-8")
        assert text == model.generate("ROMEO:", 20, 0.8, seed=3)
        assert text.startswith("ROMEO:") and len(text) == 26
        status, _, body = post(f"{srv.url}/v1/generate", b'{"prompt": "RO", "n": 4}')
        assert status == 400 and "unknown request field(s) n" in json.loads(body)["error"]
    finally:
        srv.shutdown()
        srv.server_close()
