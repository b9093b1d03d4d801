"""Fuzzing the IDX/gzip reader: arbitrary or mutated bytes raise DataError or parse, nothing else."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
from data_helpers import idx_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.data import load_source
from zoo.data.idx import gunzip_if_needed, parse_idx
from zoo.errors import DataError

VALID = idx_bytes(np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read(data: bytes, name: str = "fuzz-images-idx3-ubyte") -> np.ndarray | None:
    """The reader's whole byte path; returns the array, or None on a DataError."""
    try:
        return parse_idx(gunzip_if_needed(data, name), name)
    except DataError as e:
        assert name in str(e) and "\n" not in str(e)
        return None


@st.composite
def mutated(draw: st.DrawFn, base: bytes = VALID) -> bytes:
    """A valid IDX file with a few bytes replaced, cut short, or extended."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    header_or_body = draw(st.sampled_from(["cut", "extend", "none"]))
    if header_or_body == "cut":
        del data[draw(st.integers(0, len(data))) :]
    elif header_or_body == "extend":
        data += draw(st.binary(max_size=16))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes(data: bytes) -> None:
    read(data)
    read(data, "fuzz-images-idx3-ubyte.gz")


@FUZZ
@given(
    st.binary(max_size=8),
    st.integers(0, 255),
    st.integers(0, 255),
    st.lists(st.integers(0, 2**32 - 1), max_size=6),
)
def test_arbitrary_headers(tail: bytes, code: int, ndim: int, dims: list[int]) -> None:
    import struct

    header = bytes([0, 0, code, ndim]) + struct.pack(f">{len(dims)}I", *dims)
    arr = read(header + tail)
    if arr is not None:  # then the header must really describe the data
        assert list(arr.shape) == dims and arr.nbytes == len(tail)


@FUZZ
@given(mutated())
def test_mutated_valid_file_parses_exactly_or_fails_cleanly(data: bytes) -> None:
    arr = read(data)
    if arr is not None:
        assert arr.size * arr.dtype.itemsize == len(data) - 4 - 4 * arr.ndim


@FUZZ
@given(mutated(gzip.compress(VALID, mtime=0)))
def test_mutated_gzip_stream(data: bytes) -> None:
    read(data, "fuzz-images-idx3-ubyte.gz")


@settings(max_examples=100, deadline=None)
@given(st.one_of(mutated(), mutated(gzip.compress(VALID, mtime=0)), st.binary(max_size=40)))
def test_load_source_on_fuzzed_files_only_raises_data_error(data: bytes) -> None:
    # Through the public entry point (file reading, image checks, labels pairing, validate).
    with tempfile.TemporaryDirectory() as d:
        images = Path(d) / "t10k-images-idx3-ubyte"
        images.write_bytes(data)
        (Path(d) / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2], np.uint8)))
        try:
            raw = load_source(f"idx:{d}")
        except DataError:
            return
        assert raw.images.dtype == np.uint8 and raw.images.ndim == 4 and len(raw.labels) == 2


def test_the_unmutated_file_parses() -> None:
    arr = read(VALID)
    assert arr is not None and arr.shape == (2, 5, 4) and arr[1, 4, 3] == 39
    assert np.array_equal(read(gzip.compress(VALID)), arr)
