"""Load raw data sets from a source spec into memory: `digits`, `idx:`, `npz:`, `text:`, `s3://`.

One loader per kind (zoo.data.idx, .npz, .text, .s3; digits here) checks its file format
(gzip stream, IDX header, npz keys, UTF-8) and raises DataError naming the file; `load_source`
then runs `validate`, the one check of the loaded data, so what it returns is always
well-formed. Nothing here writes anywhere.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zoo.data.idx import load_idx
from zoo.data.npz import load_npz, parse_npz_spec
from zoo.data.raw import RawImages, RawText
from zoo.data.s3 import load_s3
from zoo.data.text import load_text
from zoo.data.validate import validate
from zoo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from zoo.storage import ObjectStore

SPEC_HELP = "valid: digits, idx:PATH, npz:PATH[,labels=PATH], text:PATH, s3://bucket/prefix"


# ---------------------------------------------------------------------------------------------
# Names


def dataset_name(spec: str) -> str:
    """A short name for the data behind a source spec, for default registered model names.

    `digits` -> digits; `idx:DIR` -> the directory's name (`idx:FILE`: its directory's, as IDX
    file names are generic); `npz:`/`text:` -> the file name without extension (and without a
    trailing `-imgs`/`-images`); `s3://bucket/prefix` -> the last part of the prefix.
    Lower-cased; characters other than letters, digits, '.' and '_' become '-'.
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec.startswith("s3://"):
        name = spec[len("s3://") :].rstrip("/").rsplit("/", 1)[-1]
    elif sep and kind in ("idx", "npz", "text"):
        path = Path(rest.split(",", 1)[0] if kind == "npz" else rest).expanduser()
        if kind == "idx":
            name = path.name if path.is_dir() or not path.suffix else path.parent.name
        else:
            name = path.name
    else:
        name = spec
    name = re.sub(r"\.(npz|txt|gz)$", "", name.lower())
    name = re.sub(r"-(imgs|images)$", "", name)
    name = re.sub(r"[^a-z0-9._]+", "-", name).strip("-.")
    return name or "data"


def default_registered_name(model: str, source: str) -> str:
    """The registered model name when none is given: MODEL-DATASET (`vae-digits`,
    `vae-mnist`), so a champion is only ever compared with models of its own dataset."""
    return f"{model}-{dataset_name(source)}"


# ---------------------------------------------------------------------------------------------
# Entry point


def load_source(spec: str, store: ObjectStore | None = None) -> RawImages | RawText:
    """Load and validate the data named by `spec` (see SPEC_HELP); raises DataError on bad data."""
    spec = spec.strip()
    if spec == "digits":
        raw: RawImages | RawText = load_digits()
    elif spec.startswith("idx:"):
        raw = load_idx(Path(spec[4:]).expanduser())
    elif spec.startswith("npz:"):
        raw = load_npz(*parse_npz_spec(spec[4:]))
    elif spec.startswith("text:"):
        raw = load_text(Path(spec[5:]).expanduser())
    elif spec.startswith("s3://"):
        if store is None:
            raise ConfigError(f"data source {spec!r} is in object storage but no store was given")
        raw = load_s3(spec, store)
    else:
        raise DataError(f"unknown data source {spec!r}; {SPEC_HELP}")
    validate(raw)
    return raw


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 digits, made MNIST-shaped


def load_digits(size: int = 20) -> RawImages:
    """The 1,797 8x8 scikit-learn digits as [N, 28, 28, 1] uint8 (offline, no download).

    Like MNIST, each digit is scaled into a `size` x `size` box centred on a 28x28 canvas.
    Computed once per process (1,797 resizes: 0.2-0.5 s of every ingest of `digits`; the warm
    server computes it before it forks its tasks); each call gets its own copy.
    """
    if not 4 <= size <= 28:
        raise ConfigError(f"digits size={size} must be in 4..28")
    images, labels = _digits(size)
    return RawImages(images.copy(), labels.copy(), "digits")


@functools.lru_cache(maxsize=2)
def _digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    # Values are 0..16 (counts of set pixels in 4x4 blocks): stretch to the 0..255 byte range.
    small = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.zeros((small.shape[0], 28, 28, 1), np.uint8)
    lo = (28 - size) // 2
    for i, im in enumerate(small):
        big = Image.fromarray(im, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        out[i, lo : lo + size, lo : lo + size, 0] = np.asarray(big)
    labels = d.target.astype(np.int64)
    out.flags.writeable = labels.flags.writeable = False  # the cached copy stays as computed
    return out, labels
