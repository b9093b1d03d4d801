"""Plain helpers for the data-layer tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.data import RawImages

# The shared, read-only real data sets (see ../shared/data/README.md at the project root).
SHARED_DATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()
MNIST_DIR = SHARED_DATA / "mnist"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}


def idx_bytes(arr: np.ndarray, code: int | None = None) -> bytes:
    """Serialize `arr` as an IDX file (big-endian dims and data)."""
    arr = np.asarray(arr)
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    if code is None:
        code = _CODES.get(arr.dtype, {4: 0x0D, 8: 0x0E}.get(arr.dtype.itemsize, 0x08))
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def unique_images(
    n: int = 40, shape: tuple[int, int, int] = (8, 8, 1), labels: bool = True
) -> RawImages:
    """Random images never published before (fresh fingerprint), so store tests are independent."""
    rng = np.random.default_rng(uuid.uuid4().int % 2**32)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, 5, size=n).astype(np.int64) if labels else None
    return RawImages(x, y, f"test:{uuid.uuid4().hex[:8]}")


def list_objects(store: Any, prefix: str) -> dict[str, tuple[str, Any]]:
    """{key: (etag, last_modified)} under a key prefix of the default bucket."""
    store.ensure_bucket()
    return {
        o.object_name: (o.etag, o.last_modified)
        for o in store.client.list_objects(store.settings.bucket, prefix, recursive=True)
    }


class CallLog:
    """Wraps methods of an object so calls still happen for real but are recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, obj: Any, *names: str) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        for name in names:
            real = getattr(obj, name)

            def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                self.calls.append((_name, args))
                return _real(*args, **kwargs)

            monkeypatch.setattr(obj, name, spy)

    def names(self, method: str) -> list[str]:
        """Object names passed to `method` (minio: bucket, object name, ...)."""
        return [args[1] for m, args in self.calls if m == method]
