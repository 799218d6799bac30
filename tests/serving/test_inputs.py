"""`decode_image`: the formats a user may send, all arriving as RGB; sizes judged from the header;
the declared type held to the bytes."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageSequence

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.serving.inputs import ImageLimits, RawInput, decode_image

LIMIT = ImageLimits(max_pixels=1_000_000, max_aspect_ratio=32)
RED = (220, 20, 20)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def raw(data: bytes, declared: str = "", index: int = 0) -> RawInput:
    return RawInput(index, data, declared)


@pytest.mark.parametrize(
    ("fmt", "media"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
@pytest.mark.parametrize("declared_as", ["exact", "untyped"])
def test_supported_formats_decode_to_rgb(fmt: str, media: str, declared_as: str) -> None:
    data = encode(Image.new("RGB", (40, 30), RED), fmt)
    declared = media if declared_as == "exact" else "application/octet-stream"
    image = decode_image(raw(data, declared), LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert image.getpixel((20, 15)) == pytest.approx(RED, abs=8)  # JPEG/WebP are lossy


def test_jpeg_aliases_are_accepted() -> None:
    data = encode(Image.new("RGB", (8, 8), RED), "JPEG")
    for declared in ("image/jpg", "image/pjpeg"):
        assert decode_image(raw(data, declared), LIMIT).size == (8, 8)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert len(ImageSequence.all_frames(Image.open(io.BytesIO(data)))) == 3
    image = decode_image(raw(data, "image/gif"), LIMIT)
    assert image.mode == "RGB"
    assert image.getpixel((8, 8)) == pytest.approx(RED, abs=8)


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("RGBA", (10, 200, 30, 128), (10, 200, 30)),
        ("L", 90, (90, 90, 90)),
        ("LA", (90, 255), (90, 90, 90)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_other_modes_come_out_rgb(
    mode: str, color: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    data = encode(Image.new(mode, (12, 12), color), "PNG")
    image = decode_image(raw(data, "image/png"), LIMIT)
    assert image.mode == "RGB" and image.getpixel((6, 6)) == expected


def test_palette_image_comes_out_rgb_in_its_palette_colours() -> None:
    palette_image = Image.new("RGB", (12, 12), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    image = decode_image(raw(encode(palette_image, "PNG"), "image/png"), LIMIT)
    assert image.mode == "RGB" and image.getpixel((6, 6)) == RED


def test_pixel_limit_is_inclusive_and_named() -> None:
    data = encode(Image.new("RGB", (1000, 1000)), "PNG")
    assert decode_image(raw(data), LIMIT).size == (1000, 1000)
    with pytest.raises(
        PayloadTooLarge,
        match=r"input 3: image is 1000x1000 = 1000000 pixels; "
        r"the limit is 999999",
    ):
        decode_image(raw(data, index=3), ImageLimits(max_pixels=999_999, max_aspect_ratio=32))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height with no pixel data behind it: decoding it would fail as
    truncated, so any other refusal shows that the header alone was judged."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_comes_from_the_header_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="5000x5000"):
        decode_image(raw(png_header_only(5000, 5000), "image/png"), LIMIT)


@pytest.mark.parametrize(("width", "height"), [(1, 6000), (20000, 1), (33, 1)])
def test_aspect_ratio_limit_comes_from_the_header_before_decoding(width: int, height: int) -> None:
    with pytest.raises(
        InvalidInput, match=rf"input 2: image is {width}x{height}, an aspect ratio of .* the limit is 32 to 1"
    ):
        decode_image(raw(png_header_only(width, height), index=2), LIMIT)


def test_aspect_ratio_limit_is_inclusive() -> None:
    assert decode_image(raw(encode(Image.new("RGB", (32, 1)), "PNG")), LIMIT).size == (32, 1)
    assert decode_image(raw(encode(Image.new("RGB", (3, 96)), "PNG")), LIMIT).size == (3, 96)


def test_what_the_model_would_resize_to_is_judged_from_the_header() -> None:
    def keeps_aspect(width: int, height: int) -> tuple[int, int]:  # shorter side to 800
        scale = 800 / min(width, height)
        return round(width * scale), round(height * scale)

    with pytest.raises(
        PayloadTooLarge, match=r"input 0: .* resize the 10x300 image to 800x24000 = 19200000 pixels"
    ):
        decode_image(raw(png_header_only(10, 300)), LIMIT, keeps_aspect)
    image = encode(Image.new("RGB", (40, 30)), "PNG")
    assert decode_image(raw(image), LIMIT, keeps_aspect).size == (40, 30)


def test_declared_type_must_match_the_bytes() -> None:
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(
        UnsupportedMediaType, match="input 2: declared image/jpeg but the bytes are a PNG image"
    ):
        decode_image(raw(png, "image/jpeg", index=2), LIMIT)


@pytest.mark.parametrize("declared", ["image/svg+xml", "image/heic", "text/plain"])
def test_unsupported_declared_type_is_refused_before_reading(declared: str) -> None:
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(UnsupportedMediaType, match=declared.replace("+", r"\+")):
        decode_image(raw(png, declared), LIMIT)


def test_format_pillow_reads_but_the_gateway_does_not_take_is_refused() -> None:
    ppm = encode(Image.new("RGB", (8, 8)), "PPM")
    with pytest.raises(UnsupportedMediaType, match="PPM images are not supported"):
        decode_image(raw(ppm), LIMIT)


def test_bytes_that_are_no_image() -> None:
    with pytest.raises(InvalidInput, match="input 1: not a recognisable image"):
        decode_image(raw(b"\x00\x01 certainly not an image", index=1), LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_truncated_image_is_invalid_input(fmt: str) -> None:
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    data = encode(noise, fmt)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(raw(data[: len(data) // 2]), LIMIT)
