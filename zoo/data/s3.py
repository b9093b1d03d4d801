"""`s3://bucket/prefix` sources: one .npz (or X-imgs.npz + X-labels.npz), .txt objects, or
an image folder (class = sub-folder) in the object store."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from zoo.data.npz import images_from_npz_bytes, npz_labels_name
from zoo.data.raw import RawImages, RawText
from zoo.data.text import decode_text
from zoo.errors import DataError, GenpipeError

if TYPE_CHECKING:
    from zoo.storage import ObjectStore

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


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
