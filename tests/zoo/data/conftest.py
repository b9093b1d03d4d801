"""Fixtures for the data-layer tests. `stack` and `store` come from tests/conftest.py."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_helpers import CallLog, idx_bytes


@pytest.fixture
def write_idx(tmp_path: Path) -> Callable[..., Path]:
    """write_idx(name, array_or_bytes, gz=None) -> path; gz defaults to `name` ending in .gz."""

    def write(name: str, data: np.ndarray | bytes, gz: bool | None = None) -> Path:
        raw = data if isinstance(data, bytes) else idx_bytes(data)
        if name.endswith(".gz") if gz is None else gz:
            raw = gzip.compress(raw, mtime=0)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        return path

    return write


@pytest.fixture
def s3_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], CallLog]:
    """s3_calls(store) records every PUT and GET the minio client makes (they still happen)."""
    return lambda store: CallLog(monkeypatch, store.client, "put_object", "get_object")
