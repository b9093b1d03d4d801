"""UTF-8 text: `text:PATH`, and the .txt objects of an `s3://` source."""

from __future__ import annotations

from pathlib import Path

from zoo.data.raw import RawText, read_file
from zoo.errors import DataError


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
    """A UTF-8 text file as one corpus."""
    return RawText(decode_text(read_file(path), str(path)), f"text:{path}")
