"""A registered model serves in real MLServer the way KServe runs it, with only what it declares.

The real-server test installs MLServer and mlserver-mlflow (the versions images/
Dockerfile.serving pins) plus the model version's own `requirements.txt` into a venv of its own
(cached under ~/.cache/genpipe-test, reused while the pins are unchanged; PyPI is the only
download), registers tiny `vae` and `gpt` champions in the real embedded MLflow, renders them
with `genpipe deploy`, downloads each `storageUri` the way KServe's storage initializer fills
/mnt/models, starts `mlserver start` with the env of k8s/serving/servingruntime.yaml on
127.0.0.1 (MLServer has no auth), and sends exactly the requests docs/kubernetes.md documents.
The project's venv has minio, kfp and genpipe installed; the MLServer venv has none of them,
so a load path that imports storage or training code fails there, as it did in KServe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cli_helpers import run_cli
from minio import Minio

from zoo import models, registration, shipping, tracking
from zoo.models.text_common import build_vocab
from zoo.settings import Settings
from zoo.train import write_model_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "Dockerfile.serving"
RUNTIME = ROOT / "k8s" / "serving" / "servingruntime.yaml"
DOCS = ROOT / "docs" / "kubernetes.md"
IMAGE_SPEC = {"shape": [28, 28, 1], "num_classes": 10}
TEXT_SPEC = {
    "shape": None,
    "num_classes": None,
    "vocab": build_vocab("ROMEO: hello there, world\n"),
}
#: what the serving image installs besides the model's requirements (its ARG names)
SERVER_ARGS = {
    "mlserver": "MLSERVER_VERSION",
    "mlserver-mlflow": "MLSERVER_MLFLOW_VERSION",
    "uvloop": "UVLOOP_VERSION",
}
#: what a model's load path must never import: storage, orchestration, our CLI's clients
FORBIDDEN = ("minio", "tenacity", "kfp", "boto3", "botocore", "kubernetes", "docker")


def dockerfile_args() -> dict[str, str]:
    """ARG NAME=VALUE defaults of images/Dockerfile.serving."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def server_pins() -> list[str]:
    args = dockerfile_args()
    return [f"{dist}=={args[arg]}" for dist, arg in SERVER_ARGS.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_dir(name: str, tmp_path: Path) -> tuple[Path, Any]:
    """A tiny untrained `name` model saved like the trainer saves it (no training needed)."""
    spec = TEXT_SPEC if models.get(name).family == "text" else IMAGE_SPEC
    model = models.get(name)(models.resolve_config(name, "tiny"), spec)
    model.build_model()
    out = tmp_path / f"{name}-model"
    out.mkdir()
    model.save(out / "model.keras")
    write_model_config(out, name, model.cfg, spec, {"fingerprint": "e" * 64})
    return out, model


def register_champion(name: str, tmp_path: Path) -> tuple[str, Any]:
    """Log and register a tiny `name` model as a fresh registered model's champion."""
    c = tracking.client()
    registered = f"{name}-mls-{uuid.uuid4().hex[:8]}"
    out, model = model_dir(name, tmp_path)
    run_id = tracking.get_or_create_run(c, "genpipe-test-mlserver", uuid.uuid4().hex, name)
    registration.log_model(c, run_id, out)
    registration.register(
        c, registered, run_id, better_than_champion=True, expected_champion="", tags={}
    )
    return registered, model


def storage_initializer(uri: str, dest: Path, env: dict[str, str]) -> Path:
    """Download every object under an s3:// prefix into `dest`, keeping the relative paths,
    as KServe's storage initializer fills /mnt/models from `storageUri`."""
    s = Settings.from_env(env)
    s3 = Minio(s.s3_host, access_key=s.access_key, secret_key=s.secret_key, secure=s.s3_secure)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    count = 0
    for obj in s3.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True):
        rel = obj.object_name[len(prefix) :].lstrip("/")
        s3.fget_object(bucket, obj.object_name, str(dest / rel))
        count += 1
    assert count, f"nothing under {uri}"
    return dest


# -- the load path needs nothing the model does not declare (no PyPI needed) -----------------

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, os, sys

    FORBIDDEN = {forbidden!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not declared)")
            return None

    sys.meta_path.insert(0, Block())
    # No checkout either: our modules must all come from the model's own code/ copy.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))]
    sys.path[:] = [p for p in sys.path if p and "__editable__" not in p
                   and not os.path.isdir(os.path.join(p, "zoo"))]
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(sys.argv[1])
    out = model.predict({{"n": 2, "seed": 0}})
    print("SHAPE", list(out.shape))
    print("LOADED", sorted(m for m in sys.modules if m.startswith("zoo")))
    print("FILES", sorted({{m.__file__ for n, m in sys.modules.items() if n.startswith("zoo")}}))
    """
)


def test_logged_model_declares_and_loads_with_only_its_requirements(stack, tmp_path):
    """The logged model pins exactly its load path's packages, carries a signature and an
    input example, and loads and predicts with storage/orchestration packages unimportable."""
    out, _ = model_dir("vae", tmp_path)
    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-mlserver", uuid.uuid4().hex, "vae")
    uri = registration.log_model(c, run_id, out)
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    reqs = (local / "requirements.txt").read_text().split()
    assert reqs == registration.model_requirements()
    assert {r.split("==")[0] for r in reqs} == {
        "tensorflow-cpu",
        "keras",
        "numpy",
        "mlflow",
        "cloudpickle",
    }
    assert all(re.fullmatch(r"[\w-]+==[\w.]+", r) for r in reqs), reqs
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(i["name"], i["type"], i["required"]) for i in inputs] == [
        ("n", "long", False),
        ("seed", "long", False),
    ]
    assert json.loads((local / "input_example.json").read_text()) == {"n": 1, "seed": 0}
    # Our code travels with the model: its load path only (zoo.shipping), each file being one
    # artifact upload (the whole package made 63 uploads per logged model, now ~17).
    shipped = sorted(str(p.relative_to(local / "code")) for p in (local / "code").rglob("*.py"))
    assert shipped == [str(p) for p in shipping.serving_files("vae")], shipped
    uploaded = [p for p in local.rglob("*") if p.is_file()]
    assert len(uploaded) <= 20, sorted(str(p.relative_to(local)) for p in uploaded)

    # A fresh interpreter (not this test's imports) with the undeclared packages blocked.
    script = tmp_path / "load.py"
    script.write_text(BLOCKER.format(forbidden=FORBIDDEN))
    res = subprocess.run(
        [sys.executable, str(script), str(local)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: `zoo` must come from the model's code
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SHAPE [2, 28, 28, 1]" in res.stdout
    loaded = json.loads(res.stdout.split("LOADED ", 1)[1].split("\n", 1)[0].replace("'", '"'))
    files = json.loads(res.stdout.split("FILES ", 1)[1].split("\n", 1)[0].replace("'", '"'))
    assert files and all(f.startswith(str(local / "code" / "zoo")) for f in files), files
    assert not {"zoo.train", "zoo.storage", "zoo.tracking", "zoo.data"} & set(loaded), loaded


def test_image_pins_equal_what_models_declare():
    """images/Dockerfile.serving installs the versions a model logged now declares."""
    args = dockerfile_args()
    arg_of = {
        "tensorflow-cpu": "TENSORFLOW_CPU_VERSION",
        "keras": "KERAS_VERSION",
        "numpy": "NUMPY_VERSION",
        "mlflow": "MLFLOW_VERSION",
        "cloudpickle": "CLOUDPICKLE_VERSION",
    }
    declared = dict(r.split("==") for r in registration.model_requirements())
    assert declared == {dist: args[arg] for dist, arg in arg_of.items()}


def test_docs_requests_name_the_signature_fields():
    """Every documented V2 request uses input names and types the signatures declare."""
    from zoo.serving import model_signature

    requests = documented_requests()
    assert set(requests) == {"vae", "gpt"}
    for served, req in requests.items():
        sig = model_signature(served, IMAGE_SPEC if served == "vae" else TEXT_SPEC)
        types = {i.name: i.type.name for i in sig.inputs.inputs}
        v2 = {"long": "INT64", "double": "FP64", "string": "BYTES"}
        for inp in json.loads(req["body"])["inputs"]:
            assert v2[types[inp["name"]]] == inp["datatype"], inp
        assert req["headers"].get("Content-Type") == "application/json"


# -- real MLServer --------------------------------------------------------------------------


def documented_requests() -> dict[str, dict[str, Any]]:
    """The V2 `curl` requests of docs/kubernetes.md by model: path, headers and body, parsed
    as curl reads them (-d without a Content-Type header sends a form content type)."""
    out = {}
    for block in re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S):
        # One shell command: up to a newline outside quotes and not escaped.
        for command in re.findall(r"""^curl(?:[^'"\\\n]|\\\n|'[^']*'|"[^"]*")*""", block, re.M):
            if "/v2/models/" not in command:
                continue
            argv = shlex.split(command.replace("\\\n", " "))
            headers: dict[str, str] = {}
            body, url = None, None
            i = 1
            while i < len(argv):
                arg = argv[i]
                if arg == "-H":
                    key, _, value = argv[i + 1].partition(":")
                    headers[key.strip()] = value.strip()
                    i += 2
                elif arg in ("-d", "--data"):
                    body = argv[i + 1]
                    i += 2
                elif arg.startswith("http"):
                    url = arg
                    i += 1
                elif arg in ("-s", "-S", "-sS"):
                    i += 1
                else:
                    raise AssertionError(f"docs curl option {arg!r} is not understood here")
            assert url and body is not None, command
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")  # curl -d
            headers.pop("Host", None)  # the ingress's virtual host; here we talk to the pod
            path = "/" + url.split("://", 1)[1].split("/", 1)[1]
            served = re.fullmatch(r"/v2/models/([\w-]+)/infer", path)
            assert served, path
            out[served.group(1)] = {"path": path, "headers": headers, "body": body}
    return out


def _venv_cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "genpipe-test"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two test processes never build one venv together
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def mlserver_venv(requirements: list[str]) -> tuple[Path, float, bool]:
    """A venv with `requirements` only (built once per requirement set); (path, seconds, cold)."""
    key = hashlib.sha256(
        "\n".join([sys.version.split()[0], *sorted(requirements)]).encode()
    ).hexdigest()[:16]
    venv = _venv_cache_root() / f"mlserver-{key}"
    start = time.monotonic()
    with _locked(venv.with_suffix(".lock")):
        if (venv / ".complete").exists():
            return venv, time.monotonic() - start, False
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        res = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", *requirements],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert res.returncode == 0, f"pip install failed:\n{res.stdout[-2000:]}{res.stderr[-4000:]}"
        (venv / ".complete").write_text("\n".join(requirements) + "\n")
    return venv, time.monotonic() - start, True


def runtime_env(model_name: str) -> dict[str, str]:
    """The env the ServingRuntime gives the container ({{.Name}} filled in like KServe)."""
    runtime = yaml.safe_load(RUNTIME.read_text())
    (container,) = runtime["spec"]["containers"]
    return {e["name"]: e["value"].replace("{{.Name}}", model_name) for e in container["env"]}


def image_command() -> list[str]:
    """The serving image's CMD (what runs in the pod: the runtime sets no command)."""
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    assert cmd, "images/Dockerfile.serving has no exec-form CMD"
    return json.loads(cmd.group(1))


@contextlib.contextmanager
def mlserver(venv: Path, model_name: str, models_dir: Path, workdir: Path) -> Iterator[str]:
    """`mlserver start` as the pod runs it, on loopback ports; yields its base URL."""
    ports = {k: str(free_port()) for k in ("http", "grpc", "metrics")}
    env = runtime_env(model_name)
    assert env["MLSERVER_MODEL_URI"] == "/mnt/models"
    env.update(
        MLSERVER_MODEL_URI=str(models_dir),
        MLSERVER_HOST="127.0.0.1",  # MLServer has no authentication: loopback only
        MLSERVER_HTTP_PORT=ports["http"],
        MLSERVER_GRPC_PORT=ports["grpc"],
        MLSERVER_METRICS_PORT=ports["metrics"],
        MLSERVER_METRICS_DIR=str(workdir / "metrics"),
        MLSERVER_ENVIRONMENTS_DIR=str(workdir / "envs"),
    )
    cmd = image_command()
    assert cmd[:2] == ["mlserver", "start"] and cmd[2] == "/mnt/models", cmd
    log = workdir / "mlserver.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(models_dir)],
            cwd=workdir,
            env={
                "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
                "HOME": str(workdir),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **env,
            },
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its inference workers are children: stop them all
        )
    url = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/models/{model_name}/ready", timeout=2):
                    break
            except (OSError, urllib.error.HTTPError):
                pass
            assert proc.poll() is None, f"mlserver exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def send(url: str, req: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    """POST a documented request; (status, JSON body, seconds)."""
    http = urllib.request.Request(
        url + req["path"], data=req["body"].encode(), headers=req["headers"], method="POST"
    )
    start = time.monotonic()
    try:
        with urllib.request.urlopen(http, timeout=120) as r:
            return r.status, json.loads(r.read()), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.monotonic() - start


def v2_input(name: str, datatype: str, value: Any) -> dict[str, Any]:
    return {"name": name, "shape": [1], "datatype": datatype, "data": [value]}


@pytest.mark.slow
def test_real_mlserver_serves_vae_and_gpt_champions_from_the_documented_requests(
    stack, tmp_path, capsys
):
    requests = documented_requests()
    figures: dict[str, Any] = {}
    for served in ("vae", "gpt"):
        registered, model = register_champion(served, tmp_path)
        # What `genpipe deploy` tells KServe, checked against KServe's CRD.
        code, out, err = run_cli(
            ["deploy", f"{registered}@champion", "-n", "kubeflow", "--service-name", served],
            capsys,
        )
        assert code == 0, err
        import upstream_contracts

        isvc = yaml.safe_load(out)
        upstream_contracts.assert_valid(isvc)
        assert isvc["spec"]["predictor"]["model"]["runtime"] == "genpipe-mlserver"
        mnt = tmp_path / f"{served}-mnt-models"
        mnt.mkdir()
        storage_initializer(isvc["spec"]["predictor"]["model"]["storageUri"], mnt, stack.env)
        assert (mnt / "MLmodel").exists()  # the MLflow model directory, MLmodel at its root

        # MLServer + its MLflow runtime + exactly what the model version declares.
        reqs = (mnt / "requirements.txt").read_text().split()
        venv, seconds, cold = mlserver_venv([*server_pins(), *reqs])
        figures[f"venv_{'cold' if cold else 'cached'}_s"] = round(seconds, 1)
        check = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import zoo"], capture_output=True, cwd=tmp_path
        )
        assert check.returncode != 0  # genpipe is not installed there: it comes with the model
        work = tmp_path / f"{served}-work"
        work.mkdir()
        started = time.monotonic()
        with mlserver(venv, served, mnt, work) as url:
            figures[f"{served}_ready_s"] = round(time.monotonic() - started, 1)
            with urllib.request.urlopen(f"{url}/v2/models/{served}", timeout=10) as r:
                meta = json.loads(r.read())
            declared = [i["name"] for i in meta["inputs"]]
            status, body, latency = send(url, requests[served])
            assert status == 200, body
            figures[f"{served}_request_s"] = round(latency, 3)
            (output,) = body["outputs"]
            sent = {i["name"]: i["data"][0] for i in json.loads(requests[served]["body"])["inputs"]}
            if served == "vae":
                assert declared == ["n", "seed"]
                n = sent["n"]
                assert output["datatype"] == "FP32" and output["shape"] == [n, 28, 28, 1]
                images = np.asarray(output["data"], dtype="float32").reshape(output["shape"])
                assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0
                np.testing.assert_allclose(images, model.generate(n, seed=sent["seed"]), atol=1e-5)
                bad = {
                    **requests[served],
                    "body": json.dumps({"inputs": [v2_input("n", "INT64", 100000)]}),
                }
                status, body, _ = send(url, bad)
                assert status >= 400 and "out of range" in json.dumps(body), body
            else:
                assert declared == ["prompt", "max_new_tokens", "temperature", "top_k", "seed"]
                assert output["datatype"] == "BYTES"
                (text,) = output["data"]
                prompt, new = sent["prompt"], sent["max_new_tokens"]
                assert text.startswith(prompt) and len(text) == len(prompt) + new
                assert text == model.generate(prompt, new, seed=0)  # the pyfunc's default seed
    print(f"\nMLServer figures: {figures}")


@pytest.mark.parametrize(
    "name, extra",
    [
        ("cgan", {"labels": np.array([3, 1])}),
        ("ddpm", {"sampler": "ddim", "steps": 2}),
        ("realnvp", {"temperature": 0.5}),
        ("vae", {}),
    ],
)
def test_image_signature_fields_reach_generate(name, extra):
    """Every field an image model's signature declares is one its generate() takes, and it
    arrives as MLServer decodes it (a one-row DataFrame; cgan labels as an array cell)."""
    import pandas as pd

    from zoo.serving import _request_dict, generate_from_request, model_signature

    sig = model_signature(name, IMAGE_SPEC)
    assert [c.name for c in sig.inputs.inputs] == ["n", "seed", *extra]
    assert sig.outputs.inputs[0].shape == (-1, 28, 28, 1)
    model = models.get(name)(models.resolve_config(name, "tiny"), IMAGE_SPEC)
    model.build_model()
    row = pd.DataFrame([{"n": np.int64(2), "seed": np.int64(0), **extra}])
    out = generate_from_request(model, _request_dict(row))
    assert out.shape == (2, 28, 28, 1) and out.min() >= 0.0 and out.max() <= 1.0
