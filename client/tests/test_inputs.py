"""Turning paths, bytes, file objects and PIL images into uploads, without a server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import png
from maas_client._inputs import image_uploads, sniff_image_type
from PIL import Image


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)  # fmt: skip
def test_the_media_type_comes_from_the_magic_bytes(fmt: str, media_type: str) -> None:
    assert sniff_image_type(png(fmt=fmt)) == media_type


def test_unknown_bytes_go_as_octet_stream_for_the_gateway_to_judge() -> None:
    assert sniff_image_type(b"hello") == "application/octet-stream"


def test_every_kind_of_input_becomes_bytes_in_order(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(png(fmt="JPEG"))
    rgba = Image.new("RGBA", (4, 4))
    uploads = image_uploads([path, str(path), png(), io.BytesIO(png(fmt="GIF")), rgba])
    assert [u.content_type for u in uploads] == [
        "image/jpeg",
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/png",
    ]
    assert uploads[0].filename == "x.jpg" and uploads[0].data == path.read_bytes()
    assert image_uploads(png())[0].content_type == "image/png"  # one input, not a list of bytes


def test_bad_inputs_are_refused_before_sending(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        image_uploads([])
    with pytest.raises(ValueError, match="empty"):
        image_uploads(b"")
    with pytest.raises(TypeError, match="binary mode"):
        image_uploads(io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        image_uploads(tmp_path / "missing.png")
