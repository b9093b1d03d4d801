"""Object storage on any S3-compatible server (SeaweedFS, MinIO, cloud S3) via the `minio` client.

Writes are atomic from a reader's point of view: an S3 PUT of one object is all-or-nothing,
and multi-object artifacts (datasets, checkpoints) are published by writing their manifest
last, so a reader that finds the manifest finds every object it lists.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error, ServerError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from zoo.errors import GenpipeError
from zoo.settings import Settings

#: S3's most keys per DeleteObjects request
_DELETE_BATCH = 1000


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key/prefix` into (bucket, key)."""
    if not uri.startswith("s3://"):
        raise GenpipeError(f"{uri!r} is not an s3:// URI (expected s3://bucket/prefix)")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise GenpipeError(f"{uri!r} names no bucket (expected s3://bucket/prefix)")
    return bucket, key


class ObjectStore:
    """A thin, typed wrapper over `minio.Minio` with URI helpers and atomic publish."""

    def __init__(self, settings: Settings, retry_seconds: float | None = None) -> None:
        self.settings = settings
        #: how long an operation keeps retrying through an outage before it fails
        self.retry_seconds = (
            float(os.environ.get("GENPIPE_RETRY_SECONDS", "120"))
            if retry_seconds is None
            else retry_seconds
        )
        # urllib3 retries once quickly; the outer, bounded retry with backoff is in `_call`.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=1, backoff_factor=0.2),
        )
        self.client = Minio(
            settings.s3_host,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.s3_secure,
            http_client=http,
        )
        #: buckets `ensure_bucket` made sure of
        self._ensured: set[str] = set()

    @classmethod
    def from_env(cls) -> ObjectStore:
        return cls(Settings.from_env())

    def uri(self, key: str, bucket: str | None = None) -> str:
        return f"s3://{bucket or self.settings.bucket}/{key.lstrip('/')}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one S3 operation, retrying through outages (connection errors, 5xx) with
        exponential backoff for up to `retry_seconds`, then failing with the endpoint named.

        Every operation is idempotent (whole-object PUT/GET/HEAD/LIST/DELETE), so a retry
        after a lost response is safe. Request bodies must be re-creatable: callers pass
        factories, not consumed streams (see put_bytes).
        """
        retrying = Retrying(
            retry=retry_if_exception_type((urllib3.exceptions.HTTPError, OSError, ServerError)),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential_jitter(initial=0.5, max=10),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return fn(*args, **kwargs)
        except S3Error:
            raise
        except (urllib3.exceptions.HTTPError, OSError, ServerError) as e:
            raise GenpipeError(
                f"object store at {self.settings.s3_endpoint} unreachable during {what} "
                f"(retried for {self.retry_seconds:g} s): {e}"
            ) from e
        raise AssertionError("unreachable")

    def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create `bucket` (default: ours) unless it exists; asked once per store object (a
        task's ingest and its publish both ensure it: one request, not two)."""
        bucket = bucket or self.settings.bucket
        if bucket in self._ensured:
            return
        if not self._call("bucket_exists", self.client.bucket_exists, bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as e:  # a concurrent creator won the race: fine
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._ensured.add(bucket)

    def put_bytes(
        self, uri: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        bucket, key = parse_s3_uri(uri)
        # A fresh stream per attempt: a retried PUT must not send a half-consumed body.
        self._call(
            f"put {uri}",
            lambda: self.client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def put_json(self, uri: str, obj: Any) -> None:
        self.put_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode(), "application/json")

    def put_file(self, uri: str, path: str | os.PathLike[str]) -> None:
        bucket, key = parse_s3_uri(uri)
        self._call(f"put {uri}", self.client.fput_object, bucket, key, str(path))

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = parse_s3_uri(uri)

        def read() -> bytes:  # GET and body read retried together
            resp = self.client.get_object(bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"get {uri}", read)

    def get_json(self, uri: str) -> Any:
        return json.loads(self.get_bytes(uri))

    def get_file(self, uri: str, path: str | os.PathLike[str]) -> Path:
        """Download to `path` atomically (temp file + rename), so a crash leaves no partial file."""
        bucket, key = parse_s3_uri(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            self._call(f"get {uri}", self.client.fget_object, bucket, key, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def exists(self, uri: str) -> bool:
        bucket, key = parse_s3_uri(uri)
        try:
            self._call(f"stat {uri}", self.client.stat_object, bucket, key)
            return True
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"):
                return False
            raise

    def list(self, uri: str, recursive: bool = True) -> Iterator[str]:
        """Yield the URIs of the objects under a prefix."""
        bucket, prefix = parse_s3_uri(uri)
        for obj in self._call(
            f"list {uri}",
            lambda: list(self.client.list_objects(bucket, prefix, recursive=recursive)),
        ):
            yield f"s3://{bucket}/{obj.object_name}"

    def list_sizes(self, uri: str) -> Iterator[tuple[str, int]]:
        """Yield (URI, size in bytes) of every object under a prefix."""
        bucket, prefix = parse_s3_uri(uri)
        for obj in self._call(
            f"list {uri}", lambda: list(self.client.list_objects(bucket, prefix, recursive=True))
        ):
            yield f"s3://{bucket}/{obj.object_name}", int(obj.size or 0)

    def copy(self, src: str, dest: str) -> None:
        """Copy one object server-side (no bytes through this process)."""
        from minio.commonconfig import CopySource

        sb, sk = parse_s3_uri(src)
        db, dk = parse_s3_uri(dest)
        self._call(f"copy {src} to {dest}", self.client.copy_object, db, dk, CopySource(sb, sk))

    def delete(self, uri: str) -> None:
        """Delete one object (deleting a missing one is not an error in S3)."""
        bucket, key = parse_s3_uri(uri)
        self._call(f"delete {uri}", self.client.remove_object, bucket, key)

    def upload_dir(self, local_dir: str | os.PathLike[str], uri: str) -> list[str]:
        """Upload every file under local_dir to the prefix `uri`; returns the object URIs."""
        local_dir = Path(local_dir)
        out = []
        for p in sorted(local_dir.rglob("*")):
            if p.is_file():
                dest = f"{uri.rstrip('/')}/{p.relative_to(local_dir).as_posix()}"
                self.put_file(dest, p)
                out.append(dest)
        return out

    def download_prefix(self, uri: str, local_dir: str | os.PathLike[str]) -> list[Path]:
        """Download every object under the prefix `uri` into local_dir (same relative layout)."""
        local_dir = Path(local_dir)
        prefix = uri.rstrip("/") + "/"
        out = []
        for obj_uri in self.list(prefix):
            rel = obj_uri[len(prefix) :]
            out.append(self.get_file(obj_uri, local_dir / rel))
        return out

    def delete_prefix(self, uri: str) -> int:
        """Delete every object under a prefix; returns how many. One listing, then S3's
        multi-object delete (up to 1000 keys a request: a training task's checkpoints went
        one DELETE each)."""
        return self.delete_many(list(self.list(uri)))

    def delete_many(self, uris: list[str]) -> int:
        """Delete these objects with S3's multi-object delete (per bucket, up to 1000 keys a
        request); returns how many."""
        by_bucket: dict[str, list[str]] = {}
        for u in uris:
            bucket, key = parse_s3_uri(u)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), _DELETE_BATCH):
                self._delete_keys(bucket, keys[i : i + _DELETE_BATCH])
        return len(uris)

    def _delete_keys(self, bucket: str, keys: list[str]) -> None:
        """Delete `keys` of `bucket` in one DeleteObjects request (retried as a whole: deleting
        a missing key is no error); any key the server refused raises, naming it."""
        from minio.deleteobjects import DeleteObject

        def remove() -> list[Any]:  # the request goes out as the answer is read
            return list(self.client.remove_objects(bucket, [DeleteObject(k) for k in keys]))

        errors = self._call(f"delete {len(keys)} objects in s3://{bucket}", remove)
        if errors:
            raise GenpipeError(
                f"object store at {self.settings.s3_endpoint} refused to delete "
                + ", ".join(f"s3://{bucket}/{e.name} ({e.code}: {e.message})" for e in errors[:5])
            )
