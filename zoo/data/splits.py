"""Split a loaded data set deterministically and fingerprint the splits by their content."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

import numpy as np

from zoo.data.manifest import FORMAT
from zoo.data.raw import RawImages, RawText
from zoo.errors import ConfigError, DataError

Splits = Mapping[str, "RawImages | RawText"]


def check_test_fraction(test_fraction: object, where: str = "test_fraction") -> float:
    """`test_fraction` if it is a number in (0, 1); else a one-line ConfigError naming it as
    `where` (the CLI flag or pipeline parameter; zoo.request checks a run with this too)."""
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0 < test_fraction < 1
    ):
        raise ConfigError(f"{where}={test_fraction!r} must be a number in (0, 1), for example 0.1")
    return float(test_fraction)


def _n_held_out(n: int, test_fraction: float, src: str, unit: str) -> int:
    k = math.floor(n * test_fraction + 0.5)
    if k < 1 or k >= n:
        raise DataError(
            f"{src}: {n} {unit} with test_fraction={test_fraction} leaves an empty "
            f"{'held-out' if k < 1 else 'training'} split; valid: more data or another test_fraction"
        )
    return k


def size(r: RawImages | RawText) -> str:
    """'9 characters' / '1617 images': a split's size in its own unit."""
    if isinstance(r, RawText):
        return f"{len(r.text)} characters"
    return f"{len(r.images)} images"


def split(raw: RawImages | RawText, test_fraction: float = 0.1) -> dict[str, RawImages | RawText]:
    """Deterministic split, no shuffling: the held-out part is the tail.

    Images -> {"train": first (1-f), "test": last f}; text -> {"train": first (1-f) of the
    characters, "val": the rest}. `raw` is taken as `load_source` returns it (validated);
    `publish` checks each split before it writes anything.
    """
    check_test_fraction(test_fraction)
    if isinstance(raw, RawText):
        k = _n_held_out(len(raw.text), test_fraction, raw.source, "characters")
        cut = len(raw.text) - k
        return {
            "train": RawText(raw.text[:cut], raw.source),
            "val": RawText(raw.text[cut:], raw.source),
        }
    if not isinstance(raw, RawImages):
        raise DataError(f"expected RawImages or RawText, got {type(raw).__name__}")
    n = len(raw)
    cut = n - _n_held_out(n, test_fraction, raw.source, "images")

    def part(sl: slice) -> RawImages:
        y = None if raw.labels is None else raw.labels[sl].astype(np.int64)
        return RawImages(raw.images[sl], y, raw.source, raw.classes)

    return {"train": part(slice(0, cut)), "test": part(slice(cut, n))}


def kind_of(splits: Splits) -> str:
    """ "image" or "text": the one kind of every split; DataError for none or a mix."""
    if not splits:
        raise DataError("no splits given; valid: a dict like {'train': ..., 'test': ...}")
    kinds = {
        r.kind if isinstance(r, (RawImages, RawText)) else type(r).__name__ for r in splits.values()
    }
    if len(kinds) != 1 or not kinds <= {"image", "text"}:
        raise DataError(f"splits mix kinds {sorted(kinds)}; valid: all RawImages or all RawText")
    return kinds.pop()


def fingerprint(splits: Splits) -> str:
    """sha256 hex of the canonical content (kind, split names, shapes, dtype, bytes); no paths."""
    kind = kind_of(splits)
    h = hashlib.sha256()

    def feed(b: bytes | memoryview) -> None:
        # Length-prefix every field so different contents can never serialise the same.
        h.update(
            len(b).to_bytes(8, "little") if isinstance(b, bytes) else b.nbytes.to_bytes(8, "little")
        )
        h.update(b)

    feed(FORMAT.encode())
    feed(kind.encode())
    for name in sorted(splits):
        r = splits[name]
        feed(name.encode())
        if isinstance(r, RawText):
            feed(r.text.encode("utf-8"))
            continue
        x = np.ascontiguousarray(r.images)
        feed(json.dumps([list(x.shape), str(x.dtype)]).encode())
        feed(memoryview(x).cast("B"))
        if r.labels is None:
            feed(b"no-labels")
        else:
            feed(np.ascontiguousarray(r.labels, dtype="<i8").tobytes())
        feed(json.dumps(r.classes).encode())
    return h.hexdigest()
