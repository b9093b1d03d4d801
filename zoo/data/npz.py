"""`.npz` image data: `npz:PATH[,labels=PATH]`, and the .npz objects of an `s3://` source.

Never unpickles anything; every layout error is a DataError naming the file, the key and,
for NaN/Inf, the record.
"""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import numpy as np

from zoo.data.raw import RawImages, read_file
from zoo.errors import DataError

#: the images file of the common two-file layout (KMNIST, K49, ...): X-imgs.npz + X-labels.npz
_NPZ_IMAGES_NAME = re.compile(r"^(?P<stem>.+)-(?:imgs|images)\.npz$", re.IGNORECASE)
NPZ_HELP = (
    "valid keys: x or images (+ y or labels), or one unnamed array (arr_0) with its labels in "
    "X-labels.npz beside X-imgs.npz or named as npz:IMAGES.npz,labels=LABELS.npz"
)


def _npz_arrays(data: bytes, name: str) -> dict[str, np.ndarray]:
    """Every array of an .npz archive (never unpickling anything)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zlib.error, KeyError) as e:
        # np.load raises ValueError for pickled/object arrays and OSError/BadZipFile otherwise
        raise DataError(f"{name}: not a readable .npz file ({e})") from None
    except Exception as e:  # zipfile.BadZipFile and friends from a corrupt archive
        raise DataError(f"{name}: not a readable .npz file ({type(e).__name__}: {e})") from None


def npz_labels_name(images_name: str) -> str | None:
    """The labels file of the two-file layout by convention: `X-imgs.npz` -> `X-labels.npz`
    (also `X-images.npz`); None for any other name."""
    base = images_name.rsplit("/", 1)[-1]
    m = _NPZ_IMAGES_NAME.match(base)
    if not m:
        return None
    return images_name[: len(images_name) - len(base)] + f"{m['stem']}-labels.npz"


def images_from_npz_bytes(
    data: bytes,
    name: str,
    source: str,
    labels_data: bytes | None = None,
    labels_name: str = "",
) -> RawImages:
    """Images from an .npz: keys `x`/`images` (+ optional `y`/`labels`), or a single unnamed
    array (`arr_0`, what `np.savez(path, array)` writes); labels may come from a separate
    .npz (`labels_data`, read from `labels_name`) holding `y`/`labels` or one unnamed array."""
    arrays = _npz_arrays(data, name)
    xk = next((k for k in ("x", "images") if k in arrays), None)
    if xk is None and list(arrays) == ["arr_0"]:
        xk = "arr_0"
    if xk is None:
        raise DataError(
            f"{name}: no images array (found keys: {sorted(arrays) or 'none'}); {NPZ_HELP}"
        )
    x = arrays[xk]
    if x.dtype == np.uint8:
        pass
    elif (
        x.dtype.kind == "f"
        and x.size
        and np.isfinite(x).all()
        and x.min() >= 0.0
        and x.max() <= 1.0
    ):
        x = np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    elif x.dtype.kind == "f" and x.size and x.ndim >= 1 and not np.isfinite(x).all():
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        i = int(np.argmax(bad))
        raise DataError(
            f"{name}: record {i}: {xk!r} holds NaN or Inf ({int(bad.sum())} record(s) do); "
            "valid: uint8 0..255 or float in [0, 1]"
        )
    else:
        rng = f", values {x.min()}..{x.max()}" if x.size and x.dtype.kind in "iuf" else ""
        raise DataError(
            f"{name}: {xk!r} has dtype {x.dtype}{rng}; valid: uint8 0..255 or float in [0, 1]"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"{name}: {xk!r} has shape {list(x.shape)}; valid: [N, H, W] or [N, H, W, C]"
        )
    yk = next((k for k in ("y", "labels") if k in arrays), None)
    y = None
    where = name
    if labels_data is not None:
        if yk is not None:
            raise DataError(
                f"{name}: holds labels {yk!r} and labels file {labels_name} was given too; "
                "valid: one source of labels"
            )
        where = labels_name
        larrays = _npz_arrays(labels_data, labels_name)
        yk = next((k for k in ("y", "labels") if k in larrays), None)
        if yk is None and len(larrays) == 1:
            yk = next(iter(larrays))
        if yk is None:
            raise DataError(
                f"{labels_name}: no labels array (found keys: {sorted(larrays) or 'none'}); "
                "valid: y or labels, or one unnamed array (arr_0)"
            )
        arrays = larrays
    if yk is not None:
        y = arrays[yk]
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise DataError(
                f"{where}: {yk!r} has shape {list(y.shape)} of {y.dtype}; valid: [N] of integers"
            )
        if y.shape[0] != x.shape[0]:
            raise DataError(
                f"{where}: {y.shape[0]} labels for {x.shape[0]} images in {name}; "
                "valid: one label per image"
            )
        y = y.astype(np.int64)
    return RawImages(np.ascontiguousarray(x), y, source)


def parse_npz_spec(spec: str) -> tuple[Path, Path | None]:
    """`IMAGES.npz[,labels=LABELS.npz]` (the part after `npz:`) -> (images path, labels path).

    Without `labels=`, an images file named `X-imgs.npz` (or `X-images.npz`) takes its labels
    from `X-labels.npz` beside it when that file exists.
    """
    path, sep, rest = spec.partition(",")
    images = Path(path).expanduser()
    if sep:
        key, eq, value = rest.partition("=")
        if key.strip() != "labels" or not eq or not value.strip():
            raise DataError(
                f"npz:{spec}: option {rest!r} not understood; valid: npz:IMAGES.npz,labels=LABELS.npz"
            )
        return images, Path(value.strip()).expanduser()
    conv = npz_labels_name(str(images))
    if conv and Path(conv).is_file():
        return images, Path(conv)
    return images, None


def load_npz(path: Path, labels: Path | None = None) -> RawImages:
    """An .npz file (+ an optional labels .npz); see `images_from_npz_bytes`."""
    source = f"npz:{path}" + (f",labels={labels}" if labels else "")
    return images_from_npz_bytes(
        read_file(path),
        str(path),
        source,
        read_file(labels) if labels is not None else None,
        str(labels) if labels is not None else "",
    )
