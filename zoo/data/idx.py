"""MNIST-style IDX files (gzipped or not): `idx:PATH`, a directory or an images file.

Every format error (gzip stream, magic, dtype code, dims, truncation) is a DataError naming
the file and, where it can, the record.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from zoo.data.raw import RawImages, read_file
from zoo.errors import DataError

# Largest decompressed size we accept from one gzip file: a guard against gzip bombs.
MAX_DECOMPRESSED_BYTES = 2 << 30

# IDX dtype codes (third byte of the magic number) -> (numpy dtype, name)
_IDX_DTYPES: dict[int, tuple[str, str]] = {
    0x08: ("u1", "unsigned byte"),
    0x09: ("i1", "signed byte"),
    0x0B: (">i2", "short"),
    0x0C: (">i4", "int"),
    0x0D: (">f4", "float"),
    0x0E: (">f8", "double"),
}
_IMAGES_FILE = re.compile(r"^(?P<pre>.*)images[-.]idx3-ubyte(?P<gz>\.gz)?$")


def gunzip_if_needed(data: bytes, name: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress `data` if it is a gzip stream (detected by its magic bytes, not its name)."""
    if data[:2] != b"\x1f\x8b":
        if name.endswith(".gz"):
            raise DataError(
                f"{name}: named .gz but is not gzip data (starts with {data[:4].hex() or 'nothing'})"
            )
        return data
    chunks, total = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            # Read in chunks: one read(limit) call would allocate `limit` bytes up front.
            while chunk := f.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise DataError(f"{name}: decompresses to more than {limit} bytes; refusing")
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{name}: corrupt or truncated gzip data ({e})") from None
    return b"".join(chunks)


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Parse one IDX file (already decompressed): magic, dtype code, ndim, big-endian dims, data."""
    if len(data) < 4:
        raise DataError(
            f"{name}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic"
        )
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{name}: not an IDX file: magic 0x{data[:4].hex()} does not start with 0x0000 "
            "(valid: 0x00000803 images, 0x00000801 labels)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(
            f"{name}: IDX magic 0x{data[:4].hex()} has unknown dtype code 0x{code:02x} "
            f"(valid: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise DataError(f"{name}: IDX magic 0x{data[:4].hex()} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{name}: truncated IDX header: {ndim} dims need {header} bytes, file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code][0])
    count = math.prod(dims)
    expected, actual = count * dtype.itemsize, len(data) - header
    if actual != expected:
        record = math.prod(dims[1:]) * dtype.itemsize
        if actual > expected:
            what = "has trailing bytes"
        elif record:
            what = f"truncated inside record {actual // record} of {dims[0]}"
        else:
            what = "truncated"
        raise DataError(
            f"{name}: IDX header declares dims {list(dims)} ({expected} data bytes) but the file "
            f"has {actual}: {what}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzipped or not."""
    return parse_idx(gunzip_if_needed(read_file(path), str(path)), str(path))


def _idx_images(path: Path) -> np.ndarray:
    arr = read_idx(path)
    if arr.dtype != np.uint8:
        raise DataError(
            f"{path}: IDX images have dtype {arr.dtype.name}; valid: unsigned byte (code 0x08)"
        )
    if arr.ndim == 3:
        arr = arr[..., None]  # [N, H, W] -> [N, H, W, 1]
    if arr.ndim != 4:
        raise DataError(
            f"{path}: IDX images have dims {list(arr.shape)}; valid: [N, H, W] or [N, H, W, C]"
        )
    return arr


def _idx_labels(path: Path, n_images: int, images_path: Path) -> np.ndarray:
    arr = read_idx(path)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(
            f"{path}: IDX labels have dims {list(arr.shape)} of {arr.dtype}; valid: [N] of integers"
        )
    if arr.shape[0] != n_images:
        raise DataError(
            f"{path}: {arr.shape[0]} labels but {images_path.name} has {n_images} images; "
            "valid: one label per image"
        )
    return arr.astype(np.int64)


def _labels_file_for(images_file: Path) -> Path | None:
    """The labels file next to an images file: *images-idx3-ubyte[.gz] -> *labels-idx1-ubyte[.gz]."""
    m = _IMAGES_FILE.match(images_file.name)
    if not m:
        return None
    sep = images_file.name[len(m["pre"]) + len("images")]
    candidates = [
        images_file.with_name(f"{m['pre']}labels{sep}idx1-ubyte{gz}") for gz in (".gz", "")
    ]
    found = [c for c in candidates if c.is_file()]
    if len(found) > 1:
        raise DataError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _idx_order(p: Path) -> tuple[int, str]:
    # Training files first, then the rest by name: the conventional test file (t10k) comes
    # last, so split()'s held-out tail is taken from it.
    return (0 if p.name.startswith("train") else 1, p.name)


def load_idx(path: Path) -> RawImages:
    """Load MNIST-style IDX images (+ labels when the matching labels file exists).

    `path` is an images file or a directory; in a directory every `*images-idx3-ubyte[.gz]` is
    read and concatenated, files whose names start with `train` first, then the rest by name
    (so `train` + `t10k` gives the 60,000 training images followed by the 10,000 test images).
    """
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if _IMAGES_FILE.match(p.name)), key=_idx_order)
        if not files:
            raise DataError(f"{path}: no *images-idx3-ubyte[.gz] file in this directory")
        stems = [p.name.removesuffix(".gz") for p in files]
        dup = next((s for s in stems if stems.count(s) > 1), None)
        if dup:
            raise DataError(f"{path / dup}: both {dup} and {dup}.gz exist; keep one")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or directory (for idx:PATH)")

    images, labels = [], []
    label_files = [_labels_file_for(f) for f in files]
    if any(label_files) and not all(label_files):
        missing = files[label_files.index(None)]
        raise DataError(
            f"{missing}: no matching *labels-idx1-ubyte[.gz] file, but other image files have one"
        )
    for f, lf in zip(files, label_files, strict=True):
        x = _idx_images(f)
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DataError(
                f"{f}: images are {list(x.shape[1:])} but {files[0].name} has {list(images[0].shape[1:])}; "
                "all files must have the same image shape"
            )
        images.append(x)
        if lf is not None:
            labels.append(_idx_labels(lf, x.shape[0], f))
    return RawImages(
        np.concatenate(images) if len(images) > 1 else images[0].copy(),
        (np.concatenate(labels) if labels else None),
        f"idx:{path}",
    )
