"""Load raw data sets from a source spec into memory: `digits`, `idx:`, `npz:`, `text:`, `s3://`.

Every loader checks its file format (gzip stream, IDX header, npz keys, UTF-8) and raises
DataError naming the file; `load_source` then runs `validate` so what it returns is always
well-formed. Nothing here writes anywhere.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zoo.errors import ConfigError, DataError, GenpipeError

if TYPE_CHECKING:
    from zoo.storage import ObjectStore

log = logging.getLogger(__name__)

SPEC_HELP = "valid: digits, idx:PATH, npz:PATH[,labels=PATH], text:PATH, s3://bucket/prefix"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Largest decompressed size we accept from one gzip file: a guard against gzip bombs.
MAX_DECOMPRESSED_BYTES = 2 << 30


@dataclass(eq=False)  # eq=False: numpy arrays do not compare to a single bool
class RawImages:
    """An in-memory image data set: uint8 [N, H, W, C] images, optional int64 [N] labels."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    #: class names by label index (image folders only); None when labels are plain integers
    classes: list[str] | None = field(default=None)

    @property
    def kind(self) -> str:
        return "image"

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class RawText:
    """An in-memory text corpus."""

    text: str
    source: str

    @property
    def kind(self) -> str:
        return "text"

    def __len__(self) -> int:
        return len(self.text)


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
    from zoo.data.validate import validate

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
    """
    from PIL import Image
    from sklearn.datasets import load_digits as sk_load_digits

    if not 4 <= size <= 28:
        raise ConfigError(f"digits size={size} must be in 4..28")
    d = sk_load_digits()
    # Values are 0..16 (counts of set pixels in 4x4 blocks): stretch to the 0..255 byte range.
    small = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.zeros((small.shape[0], 28, 28, 1), np.uint8)
    lo = (28 - size) // 2
    for i, im in enumerate(small):
        big = Image.fromarray(im, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        out[i, lo : lo + size, lo : lo + size, 0] = np.asarray(big)
    return RawImages(out, d.target.astype(np.int64), "digits")


# ---------------------------------------------------------------------------------------------
# IDX (MNIST) files

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
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_idx(gunzip_if_needed(data, str(path)), str(path))


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


# ---------------------------------------------------------------------------------------------
# npz


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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def load_npz(path: Path, labels: Path | None = None) -> RawImages:
    """An .npz file (+ an optional labels .npz); see `images_from_npz_bytes`."""
    source = f"npz:{path}" + (f",labels={labels}" if labels else "")
    return images_from_npz_bytes(
        _read(path),
        str(path),
        source,
        _read(labels) if labels is not None else None,
        str(labels) if labels is not None else "",
    )


# ---------------------------------------------------------------------------------------------
# text


def decode_text(data: bytes, name: str) -> str:
    """Decode UTF-8 (a leading byte-order mark is dropped); errors give the byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name}: not valid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); "
            "valid: UTF-8 text"
        ) from None
    return text.removeprefix("\ufeff")


def load_text(path: Path) -> RawText:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return RawText(decode_text(data, str(path)), f"text:{path}")


# ---------------------------------------------------------------------------------------------
# s3://bucket/prefix


def _decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            # Grey modes -> 1 channel; everything else (P, RGBA, CMYK, ...) -> RGB, alpha dropped.
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    # PIL raises many types for bad files (UnidentifiedImageError, OSError, SyntaxError, ...).
    except Exception as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def load_s3(uri: str, store: ObjectStore) -> RawImages | RawText:
    """Load from object storage: one .npz, .txt objects (joined), or an image folder.

    An image folder is `prefix/<class>/.../img.png` (label = index of <class> in the sorted class
    names) or flat `prefix/img.png` (no labels). Objects with other extensions are ignored;
    a prefix holding more than one kind of data is an error.
    """
    from minio.error import S3Error

    from zoo.storage import parse_s3_uri

    try:
        _bucket, key = parse_s3_uri(uri)
        if key and not key.endswith("/") and store.exists(uri):
            objects, prefix = [uri], uri.rsplit("/", 1)[0] + "/"
            labels_uri = npz_labels_name(uri)
            if labels_uri and store.exists(labels_uri):  # X-imgs.npz: its X-labels.npz too
                objects.append(labels_uri)
        else:
            prefix = uri if uri.endswith("/") else uri + "/"
            objects = sorted(store.list(prefix))
    except S3Error as e:
        raise DataError(f"{uri}: cannot list ({e.code}: {e.message})") from None
    except GenpipeError as e:
        raise DataError(f"{uri}: {e}") from None

    def ext(u: str) -> str:
        name = u.rsplit("/", 1)[-1].lower()
        return name[name.rfind(".") :] if "." in name else ""

    npz = [o for o in objects if ext(o) == ".npz"]
    txt = [o for o in objects if ext(o) == ".txt"]
    img = [o for o in objects if ext(o) in IMAGE_EXTENSIONS]
    kinds = [k for k, v in ((".npz", npz), (".txt", txt), ("image", img)) if v]
    if not kinds:
        seen = ", ".join(o.rsplit("/", 1)[-1] for o in objects[:5]) or "nothing"
        raise DataError(f"{uri}: no .npz, .txt or image (png/jpg) objects here (found: {seen})")
    if len(kinds) > 1:
        raise DataError(
            f"{uri}: holds {' and '.join(kinds)} objects; point the source at a prefix with one kind"
        )

    def get(u: str) -> bytes:
        try:
            return store.get_bytes(u)
        except S3Error as e:
            raise DataError(f"{u}: cannot read ({e.code}: {e.message})") from None

    if npz:
        # The two-file layout (X-imgs.npz + X-labels.npz): the labels file is not a data set.
        paired = {npz_labels_name(o) for o in npz} & set(npz)
        images_npz = [o for o in npz if o not in paired]
        if len(images_npz) != 1:
            raise DataError(
                f"{uri}: {len(npz)} .npz objects ({', '.join(npz[:3])}); point at one "
                "(or at a prefix with X-imgs.npz and its X-labels.npz)"
            )
        labels_uri = npz_labels_name(images_npz[0])
        if labels_uri in paired:
            return images_from_npz_bytes(
                get(images_npz[0]), images_npz[0], uri, get(labels_uri), labels_uri
            )
        return images_from_npz_bytes(get(images_npz[0]), images_npz[0], uri)
    if txt:
        parts = []
        for u in txt:  # sorted by key; a newline joins files that do not end in one
            t = decode_text(get(u), u)
            parts.append(t if not t or t.endswith("\n") or u == txt[-1] else t + "\n")
        return RawText("".join(parts), uri)

    rel = [o[len(prefix) :] for o in img]
    nested = ["/" in r for r in rel]
    if any(nested) and not all(nested):
        flat = img[nested.index(False)]
        raise DataError(
            f"{flat}: sits directly under {prefix} while other images are in class folders; "
            "valid: all images in <class>/ folders (labelled) or all flat (unlabelled)"
        )
    classes = sorted({r.split("/", 1)[0] for r in rel}) if all(nested) else None
    with ThreadPoolExecutor(max_workers=8) as pool:  # many small GETs: overlap the round trips
        arrays = list(pool.map(lambda u: _decode_image(get(u), u), img))
    first = arrays[0]
    for i, (u, a) in enumerate(zip(img, arrays, strict=True)):
        if a.shape != first.shape:
            raise DataError(
                f"{u}: record {i}: image is {'x'.join(map(str, a.shape))} (HxWxC) but {img[0]} is "
                f"{'x'.join(map(str, first.shape))}; valid: all images the same size"
            )
    labels = None
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[r.split("/", 1)[0]] for r in rel], np.int64)
    log.info("loaded %d images from %s", len(arrays), uri)
    return RawImages(np.stack(arrays), labels, uri, classes)
