"""Data errors say where the problem is: which split (and the split sizes) when the text is
fine as a whole but its held-out tail is not; which record of an npz holds NaN/Inf."""

import io

import numpy as np
import pytest

from zoo.data import load_source, publish, split
from zoo.data.npz import images_from_npz_bytes
from zoo.errors import DataError


def test_tiny_text_names_the_held_out_split_and_sizes(tmp_path):
    src = tmp_path / "ten.txt"
    src.write_text("abcdefghij")  # 10 distinct characters: fine as a whole
    splits = split(load_source(f"text:{src}"), 0.1)
    # Validation runs before anything is written, so no store is reached.
    with pytest.raises(DataError) as e:
        publish(splits, None, source=f"text:{src}")  # type: ignore[arg-type]
    msg = str(e.value)
    assert "'val' split" in msg and "train 9 characters" in msg and "val 1 characters" in msg
    assert "1 distinct character" in msg and "test_fraction" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_npz_names_the_record(bad):
    x = np.full((6, 8, 8), 0.5, dtype="float32")
    x[4, 3, 3] = bad
    buf = io.BytesIO()
    np.savez(buf, x=x)
    with pytest.raises(DataError, match=r"^f\.npz: record 4: 'x' holds NaN or Inf"):
        images_from_npz_bytes(buf.getvalue(), "f.npz", "npz:f.npz")
