"""Fetch a published dataset into a local cache (every shard sha256-verified) and open it."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.data.manifest import FP_IN_URI, MANIFEST_NAME, check_manifest, sha256_file
from zoo.errors import DataError

if TYPE_CHECKING:
    from zoo.storage import ObjectStore


@dataclass
class LocalDataset:
    """A fetched (sha256-verified) dataset in a local directory."""

    manifest: dict[str, Any]
    dir: Path
    #: local shard files per split, in manifest (= record) order
    shards: dict[str, list[Path]]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def shape(self) -> tuple[int, int, int] | None:
        s = self.manifest.get("shape")
        return tuple(s) if s else None  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        return self.manifest.get("num_classes")

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def count(self, split: str) -> int:
        return int(self.manifest["splits"][self._check_split(split)]["count"])

    def paths(self, split: str) -> list[Path]:
        return self.shards[self._check_split(split)]

    def _check_split(self, split: str) -> str:
        if split not in self.manifest["splits"]:
            raise DataError(
                f"dataset {self.fingerprint[:12]} has no split {split!r}; valid: {', '.join(self.splits)}"
            )
        return split

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> LocalDataset:
        """Open a directory written by `fetch` (its manifest.json is written last)."""
        d = Path(directory)
        try:
            m = check_manifest(json.loads((d / MANIFEST_NAME).read_text()), str(d / MANIFEST_NAME))
        except (OSError, ValueError) as e:
            raise DataError(f"{d}: no readable fetched dataset here ({e})") from None
        local = cls(m, d, _local_paths(m, d))
        missing = [p for ps in local.shards.values() for p in ps if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: listed in {d / MANIFEST_NAME} but missing; fetch again")
        return local


def _local_paths(m: dict[str, Any], d: Path) -> dict[str, list[Path]]:
    out, seen = {}, set()
    for name, s in m["splits"].items():
        out[name] = []
        for sh in s["shards"]:
            base = sh["key"].rsplit("/", 1)[-1]
            if base in ("", ".", "..") or base in seen or base == MANIFEST_NAME:
                raise DataError(
                    f"{m.get('uri')}: shard key {sh['key']!r} has a bad or duplicate name"
                )
            seen.add(base)
            out[name].append(d / base)
    return out


def _cached(d: Path, manifest_uri: str | None = None) -> LocalDataset | None:
    """A complete local copy in `d`, or None. Sizes are checked; hashes were checked on download."""
    if not (d / MANIFEST_NAME).is_file():
        return None
    try:
        local = LocalDataset.open(d)
    except DataError:
        return None
    if local.fingerprint != d.name:
        return None
    for name, ps in local.shards.items():
        for p, sh in zip(ps, local.manifest["splits"][name]["shards"], strict=True):
            if "bytes" in sh and p.stat().st_size != sh["bytes"]:
                return None
    if manifest_uri is not None and local.manifest.get("uri") != manifest_uri:
        # Same content published elsewhere: fine to reuse, but report the URI we were given.
        local.manifest = {**local.manifest, "uri": manifest_uri}
    return local


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(manifest_uri: str, store: ObjectStore, cache_dir: str | os.PathLike[str]) -> LocalDataset:
    """Download a published dataset into `cache_dir/<fingerprint>/`, verifying every sha256.

    Cached by fingerprint: when the URI is a standard `datasets/<fp>/manifest.json` and a
    complete copy is on disk, nothing is downloaded at all.
    """
    from minio.error import S3Error

    cache_dir = Path(cache_dir).expanduser()
    m_fp = FP_IN_URI.search(manifest_uri)
    if m_fp and (hit := _cached(cache_dir / m_fp.group(1), manifest_uri)) is not None:
        return hit
    try:
        manifest = check_manifest(store.get_json(manifest_uri), manifest_uri)
    except S3Error as e:
        raise DataError(
            f"{manifest_uri}: cannot read the dataset manifest ({e.code}); run ingest first"
        ) from None
    except ValueError as e:
        raise DataError(f"{manifest_uri}: manifest is not valid JSON ({e})") from None
    fp = manifest["fingerprint"]
    if m_fp and m_fp.group(1) != fp:
        raise DataError(
            f"{manifest_uri}: manifest describes fingerprint {fp}, not the one in its path"
        )
    d = cache_dir / fp
    if (hit := _cached(d, manifest_uri)) is not None:
        return hit
    d.mkdir(parents=True, exist_ok=True)
    paths = _local_paths(manifest, d)
    for name, s in manifest["splits"].items():
        for sh, dest in zip(s["shards"], paths[name], strict=True):
            if dest.is_file() and sha256_file(dest) == sh["sha256"]:
                continue  # left by an earlier, interrupted fetch
            # A unique temp name: concurrent fetchers into one cache must not share it.
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.download")
            try:
                store.get_file(sh["key"], tmp)
                got = sha256_file(tmp)
                if got != sh["sha256"]:
                    raise DataError(
                        f"{sh['key']}: sha256 {got} does not match the manifest's {sh['sha256']}; "
                        "the object was changed or corrupted after publishing"
                    )
                os.replace(tmp, dest)
            except S3Error as e:
                raise DataError(
                    f"{sh['key']}: cannot download ({e.code}); listed in {manifest_uri}"
                ) from None
            finally:
                if tmp.exists():
                    tmp.unlink()
    # The local manifest goes last too: its presence means every shard is here and verified.
    _atomic_write(d / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return LocalDataset(manifest, d, paths)
