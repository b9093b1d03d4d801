"""Build and push the component images with whichever OCI builder this machine has.

Builders, in the order `auto` tries them: a reachable Docker engine (`docker build`, BuildKit),
`podman build`, `buildah bud`. All three take the same Dockerfiles, build args and build
secrets. Extra CA certificates (a TLS-intercepting proxy, a corporate CA) are handed to the
build as the secret `extra_ca`: pip trusts them inside the RUN steps that download, and no
layer of the image keeps them.

No Docker Hub: `debootstrap_base` makes a base image from a Debian mirror (debootstrap +
`podman import`), cached as a tarball keyed by what went into it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import zoo
from zoo.errors import ConfigError, GenpipeError

BUILDERS = ("docker", "podman", "buildah")
#: Dockerfile per image variant; `serving` only where images/Dockerfile.serving exists.
VARIANT_FILES = {"cpu": "Dockerfile.cpu", "gpu": "Dockerfile.gpu", "serving": "Dockerfile.serving"}
#: What the base image needs besides Debian's minimal system (see images/Dockerfile.*).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: Left out of the base rootfs: package caches and lists, docs, man pages, translations.
BASE_TRIM = (
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
)

Log = Callable[[str], None]


def source_root() -> Path:
    """The source checkout holding images/ (the build context)."""
    root = Path(zoo.__file__).resolve().parent.parent
    if not (root / "images" / "Dockerfile.cpu").is_file():
        raise GenpipeError(
            f"{root} has no images/Dockerfile.cpu: build from a genpipe source checkout"
        )
    return root


def variants(root: Path | None = None) -> list[str]:
    """The image variants this checkout can build (serving only once its Dockerfile exists)."""
    images = (root or source_root()) / "images"
    return [v for v, f in VARIANT_FILES.items() if (images / f).is_file()]


def _engine_reachable() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    # The CLI alone is not a builder: `docker version` fails when no engine answers.
    res = subprocess.run(
        [docker, "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res.returncode == 0 and bool(res.stdout.strip())


def detect_builder(choice: str = "auto") -> str:
    """`choice` if it is usable, or with `auto` the first of BUILDERS that is."""
    if choice not in ("auto", *BUILDERS):
        raise ConfigError(f"--builder {choice!r} is not one of auto, {', '.join(BUILDERS)}")
    candidates = BUILDERS if choice == "auto" else (choice,)
    for name in candidates:
        if name == "docker":
            if _engine_reachable():
                return name
        elif shutil.which(name):
            return name
    raise GenpipeError(
        f"no image builder found (tried {', '.join(candidates)}): start a Docker engine, or "
        "install podman or buildah (Debian: apt-get install podman buildah runc)"
    )


def build_command(
    builder: str,
    dockerfile: str,
    tag: str,
    build_args: dict[str, str],
    iidfile: Path,
    ca_bundle: Path | None = None,
) -> list[str]:
    """The argv that builds `dockerfile` from the current directory as `tag`."""
    if builder == "docker":
        argv = ["docker", "build"]
    elif builder == "podman":
        argv = ["podman", "build", "--layers"]
    elif builder == "buildah":
        argv = ["buildah", "bud", "--layers"]
    else:
        raise ConfigError(f"builder {builder!r} is not one of {', '.join(BUILDERS)}")
    if builder != "docker" and not os.environ.get("BUILDAH_ISOLATION"):
        # chroot isolation needs no OCI runtime or cgroups inside the build: it works in
        # nested containers and CI machines where runc/crun cannot start a build container.
        argv += ["--isolation", "chroot"]
    argv += ["-f", dockerfile, "-t", tag, "--iidfile", str(iidfile)]
    for k, v in sorted(build_args.items()):
        argv += ["--build-arg", f"{k}={v}"]
    if ca_bundle is not None:
        argv += ["--secret", f"id=extra_ca,src={ca_bundle}"]
    return [*argv, "."]


def _ca_bundle(ca_certs: Sequence[Path], where: Path) -> Path | None:
    """The extra CA certificates as one PEM file (0600) for the `extra_ca` build secret."""
    if not ca_certs:
        return None
    parts = []
    for cert in ca_certs:
        try:
            text = Path(cert).read_text()
        except OSError as e:
            raise ConfigError(f"--ca-cert {cert}: cannot read it ({e.strerror})") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError(f"--ca-cert {cert}: not a PEM certificate (no BEGIN CERTIFICATE)")
        parts.append(text.strip() + "\n")
    bundle = where / "extra-ca.pem"
    fd = os.open(bundle, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(parts))
    return bundle


def build_image(
    variant: str,
    tag: str,
    *,
    builder: str,
    version: str,
    base_image: str = "",
    ca_certs: Sequence[Path] = (),
    on_log: Log = print,
) -> str:
    """Build images/Dockerfile.VARIANT from the source root as `tag`; returns the image id."""
    from zoo.tracking import git_commit

    root = source_root()
    if variant not in VARIANT_FILES:
        raise ConfigError(f"image variant {variant!r} is not one of {', '.join(VARIANT_FILES)}")
    if not (root / "images" / VARIANT_FILES[variant]).is_file():
        raise GenpipeError(f"{root}/images/{VARIANT_FILES[variant]} does not exist")
    args = {"GENPIPE_VERSION": version, "GIT_COMMIT": git_commit()}
    if base_image:
        args["BASE_IMAGE"] = base_image
    with tempfile.TemporaryDirectory(prefix="genpipe-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        argv = build_command(
            builder,
            f"images/{VARIANT_FILES[variant]}",
            tag,
            args,
            iidfile,
            _ca_bundle(ca_certs, Path(tmp)),
        )
        env = dict(os.environ)
        if builder == "docker":
            env["DOCKER_BUILDKIT"] = "1"  # RUN --mount=type=secret needs BuildKit
        _stream(argv, root, env, on_log, f"{builder} build {tag}")
        image_id = iidfile.read_text().strip() if iidfile.exists() else ""
    if not image_id:
        raise GenpipeError(f"{builder} build {tag} reported no image id")
    return image_id


def push_image(builder: str, tag: str, on_log: Log = print) -> None:
    """Push `tag` with the builder's own CLI (log in with `docker|podman login` first)."""
    argv = ["buildah", "push", tag] if builder == "buildah" else [builder, "push", tag]
    _stream(argv, Path.cwd(), dict(os.environ), on_log, f"{builder} push {tag}")


def _stream(argv: list[str], cwd: Path, env: dict[str, str], on_log: Log, what: str) -> None:
    """Run argv, passing each output line to on_log; failure names the last lines."""
    tail: list[str] = []
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            on_log(line)
            tail = [*tail[-4:], line]
    if proc.returncode != 0:
        last = " | ".join(t for t in tail if t.strip()) or "no output"
        raise GenpipeError(f"{what} failed (exit {proc.returncode}): {last}")


# -- content hashes (what CI caches by) -------------------------------------------------------


def context_files(root: Path) -> list[Path]:
    """The files of the build context (.dockerignore's allow list), sorted."""
    out: list[Path] = []
    for name in ("pyproject.toml", "README.md", "zoo", "components", "pipelines", "genpipe"):
        p = root / name
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [
                f
                for f in p.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
            ]
    return sorted(out)


def content_hash(variant: str, base_id: str, extra: Iterable[str] = ()) -> str:
    """sha256 (16 hex) of the Dockerfile, the build context, the base image id and `extra`."""
    root = source_root()
    h = hashlib.sha256()
    for f in [root / "images" / VARIANT_FILES[variant], *context_files(root)]:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    for x in (base_id, *extra):
        h.update(x.encode() + b"\0")
    return h.hexdigest()[:16]


# -- a base image without Docker Hub ----------------------------------------------------------


def debootstrap_base(
    cache: Path,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    packages: Sequence[str] = BASE_PACKAGES,
    on_log: Log = print,
) -> Path:
    """A minimal Debian rootfs tarball with `packages`, cached in `cache` by its inputs.

    Needs root (debootstrap) and the `debootstrap` package.
    """
    key = hashlib.sha256(f"{suite}\0{mirror}\0{','.join(packages)}".encode()).hexdigest()[:12]
    tarball = cache / f"debian-{suite}-{key}.tar"
    if tarball.is_file():
        return tarball
    if not shutil.which("debootstrap"):
        raise GenpipeError("debootstrap is not installed (Debian: apt-get install debootstrap)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genpipe-rootfs-", dir=cache) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _stream(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                suite,
                str(rootfs),
                mirror,
            ],
            cache,
            dict(os.environ),
            on_log,
            f"debootstrap {suite}",
        )
        for rel in BASE_TRIM:
            p = rootfs / rel
            if p.is_dir():
                for child in p.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            elif p.exists():
                p.unlink()
        part = Path(tmp) / "rootfs.tar"
        _stream(
            ["tar", "--sort=name", "--numeric-owner", "-C", str(rootfs), "-cf", str(part), "."],
            cache,
            dict(os.environ),
            on_log,
            "tar rootfs",
        )
        part.replace(tarball)  # atomic: a half-written tarball never looks cached
    return tarball


def import_base(tarball: Path, builder: str = "podman", on_log: Log = print) -> str:
    """`podman import` (or buildah) the rootfs tarball once; returns its local image ref."""
    digest = hashlib.sha256()
    with open(tarball, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    ref = f"localhost/genpipe-base:{digest.hexdigest()[:16]}"
    tool = "podman" if builder in ("podman", "buildah") and shutil.which("podman") else builder
    if image_exists(tool, ref):
        return ref
    _stream([tool, "import", str(tarball), ref], Path.cwd(), dict(os.environ), on_log, "import")
    return ref


def image_exists(tool: str, ref: str) -> bool:
    argv = [tool, "image", "inspect", ref]
    return subprocess.run(argv, capture_output=True).returncode == 0


def image_id(tool: str, ref: str) -> str:
    res = subprocess.run(
        [tool, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise GenpipeError(f"{tool} image inspect {ref}: {res.stderr.strip() or 'not found'}")
    return res.stdout.strip()


def image_size(tool: str, ref: str) -> int:
    """Uncompressed size in bytes, as the builder reports it."""
    res = subprocess.run(
        [tool, "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise GenpipeError(f"{tool} image inspect {ref}: {res.stderr.strip() or 'not found'}")
    return int(res.stdout.strip())
