"""The in-memory data types every loader returns and every later step takes.

Their own module so that the loaders (zoo.data.sources and the per-format modules) and the
checks on them (zoo.data.validate) both import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo.errors import DataError


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


def read_file(path: Path) -> bytes:
    """A local file's bytes; an unreadable file is a DataError naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
