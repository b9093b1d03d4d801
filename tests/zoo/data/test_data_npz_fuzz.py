"""Fuzzing the npz reader: mutated archives and arbitrary arrays parse or raise DataError."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zoo.data.npz import images_from_npz_bytes
from zoo.data.validate import validate
from zoo.errors import DataError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


VALID = _npz(x=np.zeros((3, 6, 6), np.uint8), y=np.arange(3))


def read(data: bytes) -> None:
    try:
        validate(images_from_npz_bytes(data, "fuzz.npz", "npz:fuzz.npz"))
    except DataError as e:
        assert "fuzz.npz" in str(e) and "\n" not in str(e)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    read(data)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(VALID)),
)
def test_mutated_archive(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for i, b in flips:
        data[i] = b
    read(bytes(data[: max(cut, 1)]))


@FUZZ
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, max_side=5),
    ),
    st.one_of(
        st.none(),
        hnp.arrays(
            dtype=st.sampled_from([np.int64, np.float32]),
            shape=hnp.array_shapes(max_dims=2, max_side=6),
        ),
    ),
    st.sampled_from(["x", "images", "data"]),
)
def test_arbitrary_arrays(x: np.ndarray, y: np.ndarray | None, key: str) -> None:
    arrays = {key: x} if y is None else {key: x, "y": y}
    read(_npz(**arrays))
