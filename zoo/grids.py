"""Image helpers: sample grids as PNG (MLflow artifacts, KFP reports, the serve endpoint)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float images in [0, 1] -> uint8 (clipped, rounded)."""
    return np.clip(np.rint(np.asarray(images, dtype="float32") * 255.0), 0, 255).astype("uint8")


def grid(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile [N, H, W, C] float images in [0, 1] into one uint8 [rows*H, cols*W, C] image."""
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"grid expects [N, H, W, C] images with N > 0, got shape {images.shape}")
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype="uint8")
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y : y + h, x : x + w] = img
    return out


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """Encode a uint8 [H, W, C] (C in 1, 3) image as PNG, optionally upscaled (nearest)."""
    arr = image[..., 0] if image.shape[-1] == 1 else image
    pil = Image.fromarray(arr)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def grid_png(images: np.ndarray, cols: int | None = None, scale: int = 2) -> bytes:
    return png_bytes(grid(images, cols), scale=scale)
