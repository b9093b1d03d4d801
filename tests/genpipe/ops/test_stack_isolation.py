"""The embedded SeaweedFS as a hostile local user sees it: only the S3 port with our keys works.

SeaweedFS checks S3 signatures on its S3 port only; its master, volume and filer ports (HTTP
and gRPC) used to serve and change every object without any key. Here a second, unprivileged
user (uid 65534) and a keyless process of our own uid probe each of them with what the issue
showed working (listing, GET of a real object, POST, DELETE, /dir/assign for a write token,
gRPC calls) and must be refused, while the S3 path with keys keeps working.
"""

from __future__ import annotations

import secrets
import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc  # imported here, used only in forked children (a fork after gRPC ran may hang)
import pytest

from genpipe.ops import stack as zstack
from tests.as_user import NOBODY, can_switch_user, run_as
from zoo.settings import DEFAULT_BUCKET
from zoo.storage import ObjectStore

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(url: str, method: str = "GET", body: bytes | None = None) -> list:
    """[status, body head] of one anonymous request, or [error, ""]."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with _DIRECT.open(req, timeout=30) as r:
            return [r.status, r.read(4096).decode("utf-8", "replace")]
    except urllib.error.HTTPError as e:
        with e:
            return [e.code, e.read(4096).decode("utf-8", "replace")]
    except OSError as e:
        return [str(e), ""]


def _unix_http(path: str) -> list:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(path)
            s.sendall(b"GET /buckets/ HTTP/1.1\r\nHost: x\r\n\r\n")
            return [s.recv(4096).decode("utf-8", "replace").split("\r\n")[0], ""]
    except OSError as e:
        return [str(e), ""]


def _rpc(target: str, method: str, request: bytes, ca: bytes | None) -> list:
    """A real gRPC call without a client certificate (plaintext, or TLS trusting `ca`)."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca) if ca else None
    ch = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        if method.endswith("ListEntries"):
            return ["OK", repr(list(ch.unary_stream(method)(request, timeout=30)))]
        return ["OK", repr(ch.unary_unary(method)(request, timeout=30))]
    except grpc.RpcError as e:
        return [str(e.code()), e.details()]
    finally:
        ch.close()


def _attack(a: dict) -> dict[str, list]:
    """Everything an anonymous local process would try; each outcome by name."""
    m, v, f, b, fid, obj = a["master"], a["volume"], a["filer"], a["bucket"], a["fid"], a["object"]
    h = "http://127.0.0.1"
    out = {
        "master assign (write token)": _http(f"{h}:{m}/dir/assign"),
        "master lookup (read token)": _http(f"{h}:{m}/dir/lookup?fileId={fid}"),
        "master submit (POST)": _http(f"{h}:{m}/submit", "POST", b"intruder"),
        "master delete collection": _http(f"{h}:{m}/col/delete?collection={b}"),
        "master redirect to object": _http(f"{h}:{m}/{fid}"),
        "volume GET object": _http(f"{h}:{v}/{fid}"),
        "volume POST object": _http(f"{h}:{v}/{fid}", "POST", b"intruder"),
        "volume DELETE object": _http(f"{h}:{v}/{fid}", "DELETE"),
        "filer list buckets": _http(f"{h}:{f}/buckets/"),
        "filer list bucket": _http(f"{h}:{f}/buckets/{b}/"),
        "filer GET object": _http(f"{h}:{f}/buckets/{b}/{obj}"),
        "filer GET metadata": _http(f"{h}:{f}/buckets/{b}/{obj}?metadata=true"),
        "filer POST object": _http(f"{h}:{f}/buckets/{b}/intruder.txt", "POST", b"x"),
        "filer DELETE object": _http(f"{h}:{f}/buckets/{b}/{obj}", "DELETE"),
    }
    for path in a["unix_http"]:
        out[f"unix {path}"] = _unix_http(path)
    assign = ("/master_pb.Seaweed/Assign", b"\x08\x01")  # count=1: a fid + its write token
    for name, target, (method, request) in [
        ("master", f"127.0.0.1:{m + 10000}", assign),
        (
            "filer",
            f"127.0.0.1:{f + 10000}",
            ("/filer_pb.SeaweedFiler/ListEntries", b"\x0a\x08/buckets"),
        ),
        (
            "volume",
            f"127.0.0.1:{v + 10000}",
            ("/volume_server_pb.VolumeServer/VolumeServerStatus", b""),
        ),
        ("s3", f"127.0.0.1:{a['s3'] + 10000}", ("/messaging_pb.SeaweedS3/Configure", b"")),
        *[(f"unix {p}", f"unix:{p}", assign) for p in a["unix_grpc"]],
    ]:
        out[f"gRPC {name} plaintext"] = _rpc(target, method, request, None)
        # knows the CA certificate (TLS shows it anyway) but has no client certificate
        out[f"gRPC {name} TLS, no client cert"] = _rpc(target, method, request, a["ca"].encode())
    return out


def _pb_fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: enough to read a FileChunk."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = int.from_bytes(buf[i : i + 4], "little"), i + 4
        elif wire == 1:
            value, i = int.from_bytes(buf[i : i + 8], "little"), i + 8
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _fid_of(state_dir: str, filer_grpc: int, key: str) -> str:
    """The volume file id of an object's first chunk, asked from the filer over gRPC with the
    stack's own client certificate (what our S3 gateway does); runs in a forked child."""
    conf = Path(state_dir) / "seaweedfs-security"
    target = f"127.0.0.1:{filer_grpc}"
    if conf.exists():
        creds = grpc.ssl_channel_credentials(
            root_certificates=(conf / "ca.crt").read_bytes(),
            private_key=(conf / "weed.key").read_bytes(),
            certificate_chain=(conf / "weed.crt").read_bytes(),
        )
        ch = grpc.secure_channel(target, creds)
    else:  # a stack of before this change: no gRPC security at all
        ch = grpc.insecure_channel(target)
    directory, _, name = f"/buckets/{DEFAULT_BUCKET}/{key}".rpartition("/")
    request = b"\x0a" + bytes([len(directory)]) + directory.encode()
    request += b"\x12" + bytes([len(name)]) + name.encode()
    with ch:
        reply = ch.unary_unary("/filer_pb.SeaweedFiler/LookupDirectoryEntry")(request, timeout=60)
    entry = next(v for f, _, v in _pb_fields(reply) if f == 1)
    chunk = next(v for f, _, v in _pb_fields(entry) if f == 3)  # Entry.chunks
    for field, _, value in _pb_fields(chunk):
        if field == 1 and value:  # FileChunk.file_id "vid,keycookie"
            return value.decode()
    fid = dict((f, v) for f, _, v in _pb_fields(next(v for f, _, v in _pb_fields(chunk) if f == 7)))
    return f"{fid.get(1, 0)},{fid.get(2, 0):x}{fid.get(3, 0):08x}"  # FileChunk.fid


def _probe(stack, key: str, fid: str, user: int | None) -> dict[str, list]:
    ports = zstack.load_ports(stack.state_dir)
    unix_http = [str(p) for p in (stack.state_dir / "run").glob("*.sock")]
    ca = stack.state_dir / "seaweedfs-security" / "ca.crt"
    unix_grpc = [
        f"/tmp/seaweedfs-{name}-grpc-{getattr(ports, name) + 10000}.sock"
        for name in ("master", "volume", "filer", "s3")
    ]
    args = {
        "master": ports.master,
        "volume": ports.volume,
        "filer": ports.filer,
        "s3": ports.s3,
        "bucket": DEFAULT_BUCKET,
        "object": key,
        "fid": fid,
        "unix_http": unix_http,
        "unix_grpc": [p for p in unix_grpc if Path(p).exists()],
        "ca": ca.read_text() if ca.exists() else "",
    }
    return run_as(user, _attack, args)


def _granted(outcomes: dict[str, list]) -> dict[str, list]:
    """The probes that got anything but a refusal (an HTTP 4xx or an error); a timeout
    proves nothing, so it counts here too."""
    return {
        name: got
        for name, got in outcomes.items()
        if got[0] == "OK"
        or (isinstance(got[0], int) and got[0] < 400)
        or "timed out" in str(got[0]).lower()
        or "DEADLINE_EXCEEDED" in str(got[0])
    }


@pytest.mark.skipif(not can_switch_user(), reason="becoming uid 65534 needs root")
@pytest.mark.parametrize("user", [NOBODY, None], ids=["uid-65534", "same-uid-without-keys"])
def test_master_volume_and_filer_ports_refuse_anyone_without_keys(stack, user) -> None:
    store = ObjectStore.from_env()
    key = f"tests/isolation/{secrets.token_hex(8)}.bin"
    secret = secrets.token_bytes(64 * 1024)  # big enough to live in a volume, not inline
    store.put_bytes(store.uri(key), secret)
    ports = zstack.load_ports(stack.state_dir)
    fid = run_as(None, _fid_of, str(stack.state_dir), ports.filer + 10000, key)

    outcomes = _probe(stack, key, fid, user)
    assert _granted(outcomes) == {}
    assert len(outcomes) >= 22, outcomes  # every probe ran
    # the object is untouched and still served by S3 to the key holder
    assert store.get_bytes(store.uri(key)) == secret
    assert not store.exists(store.uri("intruder.txt"))


def test_weed_keys_and_certificates_are_owner_only(stack) -> None:
    conf = stack.state_dir / "seaweedfs-security"
    assert conf.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in conf.iterdir())
    assert names == ["ca.crt", "security.toml", "weed.crt", "weed.key"]
    for p in conf.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    text = (conf / "security.toml").read_text()
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "grpc.client"):
        assert f"[{section}]" in text
    assert 'key = ""' not in text  # no section left without its key
    assert (stack.state_dir / "run").stat().st_mode & 0o777 == 0o700
