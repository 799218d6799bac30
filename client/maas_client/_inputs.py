"""Turning what users hold (paths, bytes, file objects, PIL images) into bytes to upload."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeAlias, Union, cast

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageInput: TypeAlias = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], "PILImage"]
"""One image: a path, its bytes, a binary file object, or a PIL image."""

FileInput: TypeAlias = Union[str, "os.PathLike[str]", bytes, IO[bytes]]
"""One file to upload: a path, its bytes, or a binary file object."""

_PIL_SAVE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


@dataclass(frozen=True)
class Upload:
    """One input ready to send."""

    filename: str
    data: bytes
    content_type: str


def sniff_image_type(data: bytes) -> str:
    """The image media type from the first bytes (magic numbers); octet-stream when unknown,
    which lets the gateway sniff the bytes itself."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return "application/octet-stream"


def _is_pil_image(value: object) -> bool:
    # Checked by module name so that PIL is never imported unless the caller already uses it.
    return type(value).__module__.startswith("PIL.") and hasattr(value, "save") and hasattr(value, "mode")


def read_file_input(value: FileInput, index: int = 0) -> tuple[str, bytes]:
    """(file name, bytes) of a path, bytes or binary file object."""
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        return path.name, path.read_bytes()
    if isinstance(value, bytes | bytearray | memoryview):
        return f"input-{index}", bytes(value)
    if hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, bytes):
            raise TypeError(f"input {index}: file objects must be opened in binary mode ('rb')")
        name = getattr(value, "name", None)
        return (Path(name).name if isinstance(name, str) else f"input-{index}"), data
    raise TypeError(f"input {index}: expected a path, bytes or a binary file, got {type(value).__name__}")


def image_upload(value: ImageInput, index: int = 0) -> Upload:
    """One image input as bytes with a media type guessed from its magic bytes."""
    if _is_pil_image(value):
        image: PILImage = value  # type: ignore[assignment]
        fmt = (image.format or "PNG").upper()
        if fmt not in _PIL_SAVE_FORMATS:
            fmt = "PNG"
        if fmt == "JPEG" and image.mode not in ("RGB", "L"):
            fmt = "PNG"  # JPEG cannot carry alpha or palettes
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        data = buffer.getvalue()
        return Upload(f"input-{index}.{fmt.lower()}", data, sniff_image_type(data))
    name, data = read_file_input(value, index)  # type: ignore[arg-type]
    if not data:
        raise ValueError(f"input {index} ({name}) is empty")
    return Upload(name, data, sniff_image_type(data))


def image_uploads(images: ImageInput | Sequence[ImageInput]) -> list[Upload]:
    """One or several image inputs, in order."""
    items: Sequence[ImageInput]
    if isinstance(images, str | bytes | bytearray | memoryview):
        items = [images]
    elif isinstance(images, Sequence):
        items = cast("Sequence[ImageInput]", images)
    else:
        items = [images]
    if not items:
        raise ValueError("no images given")
    return [image_upload(item, i) for i, item in enumerate(items)]
