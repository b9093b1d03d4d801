"""Embedded mode with containers: every task of the pipeline in its component image.

`genpipe run MODEL --containers` runs the same compiled pipeline as the subprocess mode, but
kfp.local's DockerRunner starts one container per task, through a Docker-compatible API (a
Docker engine, or `podman system service` started here for the run). Each container runs as
a pod would: uid 10001, read-only root filesystem, a tmpfs /tmp as the only scratch space
(the emptyDir of a pod), the embedded SeaweedFS and MLflow reached on the host's loopback
(host network), and the credentials passed as environment variables (never in the image).

The pipeline root is bind-mounted at the same path (kfp.local's layout): a fresh directory
under /var/tmp per run (it exists in the image and any user may traverse it, unlike /root),
owned by uid 10001 with mode 0700 so the task can write its outputs there, and removed after
the run (everything a run keeps is in the object store and MLflow). Rootful podman or a Docker
engine: the host user (root) chowns it. Rootless podman maps ids differently and is not
supported yet.

Every task container is checked, not assumed: a probe in front of the task's own command
prints its uid, gid, whether a write to $HOME (owned by that uid) fails with "Read-only file
system", and the root mount's options; after the task the container's configuration is
inspected (User, ReadonlyRootfs, Tmpfs, mounts). Both go into `ContainerSession.records`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import GenpipeError

#: the uid:gid of the images' user (images/Dockerfile.*), as a pod's runAsUser would be
TASK_USER = "10001:10001"
#: environment passed into task containers: the stack's endpoints and credentials
ENV_PREFIXES = ("GENPIPE_", "MLFLOW_", "AWS_")
#: host-only settings that mean nothing (or the wrong thing) inside a container
ENV_EXCLUDE = frozenset(
    {
        "GENPIPE_HOME",
        "GENPIPE_CACHE",
        "AWS_CA_BUNDLE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    }
)
PROBE_PREFIX = "genpipe-container-probe"
# In front of kfp's own `sh -c` command; `exec "$@"` then runs that command unchanged.
_PROBE = (
    'u=$(id -u); g=$(id -g); p="$HOME/.genpipe-rootfs-probe"; '
    'if e=$(touch "$p" 2>&1); then rm -f "$p"; home=writable; '
    'else case "$e" in *"Read-only file system"*) home=read-only;; *) home=denied;; esac; fi; '
    't=/tmp/.genpipe-probe; if touch "$t" 2>/dev/null; then rm -f "$t"; tmp=writable; '
    "else tmp=read-only; fi; "
    "root=$(awk '$5 == \"/\" {print $6}' /proc/self/mountinfo | tail -n 1); "
    f'echo "{PROBE_PREFIX} uid=$u gid=$g home=$home tmp=$tmp root_mount=$root"; '
    'exec "$@"'
)
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass
class ContainerSession:
    """One containerized run: the API endpoint, the image, and what each task container did."""

    docker_host: str
    image: str
    pipeline_root: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def workspace(self) -> Path:
        """kfp.local's workspace (mounted at /kfp-workspace), inside the pipeline root: also
        the task user's, and removed with it (kfp's default is a temp dir it never removes)."""
        return self.pipeline_root / "workspace"

    def run_args(self) -> dict[str, Any]:
        """docker SDK `containers.run` arguments every task container gets (call it once the
        stack's variables are in os.environ)."""
        return {
            "user": TASK_USER,
            "read_only": True,
            # The only writable path a pod has (an emptyDir at /tmp); mode 1777 like /tmp.
            "tmpfs": {"/tmp": "rw,mode=1777,nosuid,nodev"},
            "network_mode": "host",  # the embedded stack listens on the host's 127.0.0.1
            "environment": task_environment(),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }


def task_environment() -> dict[str, str]:
    """What a task container sees: this process's GENPIPE_/MLFLOW_/AWS_ settings (the stack's
    endpoints and credentials among them), less the host-only ones."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(ENV_PREFIXES) and k not in ENV_EXCLUDE and not k.startswith("GENPIPE_WARM")
    }


@contextlib.contextmanager
def api_endpoint(state: Path) -> Iterator[str]:
    """DOCKER_HOST if set; else a `podman system service` on a 0700-dir Unix socket for the run.

    The socket is a file only this user can open (the filesystem authenticates the peer).
    """
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    if Path("/var/run/docker.sock").exists():
        yield "unix:///var/run/docker.sock"
        return
    podman = shutil.which("podman")
    if not podman:
        raise GenpipeError(
            "--containers needs a Docker engine (DOCKER_HOST or /var/run/docker.sock) or podman "
            "(Debian: apt-get install podman runc)"
        )
    run_dir = state / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    sock_dir = Path(tempfile.mkdtemp(prefix="podman-", dir=run_dir))
    sock = sock_dir / "podman.sock"
    log = open(sock_dir / "service.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [podman, "system", "service", "--time=0", f"unix://{sock}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (sock_dir / "service.log").read_text().strip().splitlines()[-3:]
                raise GenpipeError(
                    f"podman system service did not start ({' | '.join(tail) or 'no output'})"
                )
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _client(docker_host: str) -> Any:
    import docker

    # No read timeout: a task's log stream can stay silent for minutes while it trains.
    return docker.DockerClient(base_url=docker_host, timeout=None)


def check_image(docker_host: str, image: str) -> str:
    """The local image's id; GenpipeError if it is not there (we never pull for a run)."""
    from docker.errors import DockerException, ImageNotFound

    client = _client(docker_host)
    try:
        return client.images.get(image).id
    except ImageNotFound:
        raise GenpipeError(
            f"image {image} is not in the local image store: build it first "
            f"(genpipe images build --variant cpu), or pass --image"
        ) from None
    except DockerException as e:
        raise GenpipeError(f"cannot reach the container API at {docker_host}: {e}") from None
    finally:
        client.close()


def make_pipeline_root() -> Path:
    """A fresh pipeline root owned by the task user, readable by nobody else."""
    if os.geteuid() != 0:
        raise GenpipeError(
            "--containers: the tasks' outputs directory must belong to uid 10001 (the image's "
            "user); run as root with rootful podman or a Docker engine (rootless podman is not "
            "supported yet)"
        )
    parent = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="genpipe-kfp-", dir=parent))
    uid, gid = (int(x) for x in TASK_USER.split(":"))
    for d in (root, root / "workspace"):
        d.mkdir(exist_ok=True)
        os.chown(d, uid, gid)
        os.chmod(d, 0o700)
    return root


def _task_name(command: list[str]) -> str:
    if "--function_to_execute" in command:
        i = command.index("--function_to_execute")
        if i + 1 < len(command):
            return command[i + 1]
    return "task"


@contextlib.contextmanager
def session(state: Path, image: str) -> Iterator[ContainerSession]:
    """A ContainerSession; within it kfp.local's DockerRunner tasks run our way (see module doc)."""
    from kfp.local import docker_task_handler as dth

    with api_endpoint(state) as host:
        check_image(host, image)
        s = ContainerSession(
            docker_host=host,
            image=image,
            pipeline_root=make_pipeline_root(),
        )
        original = dth.run_docker_container
        saved_host = os.environ.get("DOCKER_HOST")

        def run_container(
            client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any
        ) -> int:
            return _run_task(s, image, command, volumes, run_args)

        dth.run_docker_container = run_container
        # DockerTaskHandler.run() calls docker.from_env() (for `info()`): the same endpoint.
        os.environ["DOCKER_HOST"] = host
        try:
            yield s
        finally:
            dth.run_docker_container = original
            shutil.rmtree(s.pipeline_root, ignore_errors=True)
            if saved_host is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved_host


def _run_task(
    s: ContainerSession,
    image: str,
    command: list[str],
    volumes: dict[str, Any],
    run_args: dict[str, Any],
) -> int:
    """kfp.local's run_docker_container, but: no pull, the probe, the real exit code, inspect.

    kfp's own removes the container on exit (auto_remove) and then reports success when the
    container is already gone; here the container stays until its exit code and
    configuration are read, then it is removed.
    """
    from docker.errors import DockerException

    client = _client(s.docker_host)
    task = _task_name(command)
    record: dict[str, Any] = {"task": task, "image": image}
    container = None
    try:
        container = client.containers.run(
            image=image,
            command=["sh", "-c", _PROBE, PROBE_PREFIX, *command],
            detach=True,
            stdout=True,
            stderr=True,
            volumes=volumes,
            labels={"io.genpipe.task": task},
            **run_args,
        )
        pending = ""  # chunks are not lines: the probe's line may arrive in pieces
        for chunk in container.logs(stream=True, follow=True):
            text = chunk.decode(errors="replace")
            print(text, end="")
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.startswith(PROBE_PREFIX) and "probe" not in record:
                    record["probe"] = dict(_FIELD.findall(line))
        code = int(container.wait()["StatusCode"])
        attrs = client.api.inspect_container(container.id)
        host_cfg = attrs.get("HostConfig", {})
        record.update(
            exit_code=code,
            user=attrs.get("Config", {}).get("User", ""),
            read_only_rootfs=bool(host_cfg.get("ReadonlyRootfs")),
            tmpfs=sorted((host_cfg.get("Tmpfs") or {}).keys()),
            network_mode=host_cfg.get("NetworkMode", ""),
            mounts=sorted(
                (m.get("Destination", ""), m.get("Source", ""), bool(m.get("RW")))
                for m in attrs.get("Mounts", [])
            ),
            env_names=sorted(e.split("=", 1)[0] for e in attrs.get("Config", {}).get("Env", [])),
        )
        return code
    except DockerException as e:
        print(f"GenpipeError: task {task}: container failed: {e}")
        record["error"] = str(e)
        return 1
    finally:
        s.records.append(record)
        if container is not None:
            with contextlib.suppress(DockerException):
                container.remove(force=True)
        client.close()
