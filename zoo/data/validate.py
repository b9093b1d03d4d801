"""Checks on loaded data, run before anything is written: one-line DataErrors saying what is valid."""

from __future__ import annotations

import numpy as np

from zoo.data.raw import RawImages, RawText
from zoo.errors import DataError

MIN_SIDE = 4
CHANNELS = (1, 3)
MIN_DISTINCT_CHARS = 2


def validate(raw: RawImages | RawText) -> None:
    """Raise DataError (naming the source and record) unless `raw` is usable for training."""
    if isinstance(raw, RawImages):
        _validate_images(raw)
    elif isinstance(raw, RawText):
        _validate_text(raw)
    else:
        raise DataError(f"expected RawImages or RawText, got {type(raw).__name__}")


def _validate_images(raw: RawImages) -> None:
    src, x = raw.source, raw.images
    if not isinstance(x, np.ndarray):
        raise DataError(f"{src}: images are a {type(x).__name__}; valid: a numpy uint8 array")
    if x.dtype != np.uint8:
        raise DataError(f"{src}: images have dtype {x.dtype}; valid: uint8 (0..255)")
    if x.ndim != 4:
        raise DataError(f"{src}: images have shape {list(x.shape)}; valid: [N, H, W, C]")
    n, h, w, c = x.shape
    if n == 0:
        raise DataError(f"{src}: no images; valid: at least 1 record")
    if c not in CHANNELS:
        raise DataError(f"{src}: images have {c} channels; valid: 1 (grey) or 3 (RGB)")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise DataError(f"{src}: images are {h}x{w}; valid: height and width >= {MIN_SIDE}")
    y = raw.labels
    if y is None:
        if raw.classes is not None:
            raise DataError(f"{src}: class names given but no labels")
        return
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        kind = getattr(y, "dtype", type(y).__name__)
        raise DataError(f"{src}: labels are {kind}; valid: integers")
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{src}: labels have shape {list(y.shape)} for {n} images; valid: [{n}]")
    if y.dtype.kind == "i" and (y < 0).any():
        i = int(np.argmax(y < 0))
        raise DataError(f"{src}: record {i}: label {int(y[i])} is negative; valid: integers >= 0")
    if raw.classes is not None and int(y.max()) >= len(raw.classes):
        i = int(np.argmax(y >= len(raw.classes)))
        raise DataError(
            f"{src}: record {i}: label {int(y[i])} but only {len(raw.classes)} class names; "
            f"valid: 0..{len(raw.classes) - 1}"
        )


def _validate_text(raw: RawText) -> None:
    src, t = raw.source, raw.text
    if not isinstance(t, str):
        raise DataError(f"{src}: text is a {type(t).__name__}; valid: str")
    if not t:
        raise DataError(
            f"{src}: text is empty; valid: at least {MIN_DISTINCT_CHARS} distinct characters"
        )
    try:
        t.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates (e.g. from surrogateescape decoding)
        raise DataError(
            f"{src}: character offset {e.start} ({t[e.start]!r}) cannot be encoded as UTF-8; "
            "valid: UTF-8 text"
        ) from None
    distinct = len(set(t))
    if distinct < MIN_DISTINCT_CHARS:
        raise DataError(
            f"{src}: text has {distinct} distinct character(s); valid: at least {MIN_DISTINCT_CHARS}"
        )
