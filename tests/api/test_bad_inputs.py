"""Bad predict requests, in-process: each gets its own 4xx in the one error shape, says which input
was wrong, never reaches the model, and leaves the gateway serving the next good request."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import ADMIN_KEY, image_bytes

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/tiny-vit/predict"
PNG = {"Content-Type": "image/png"}
MAX_BODY = 2 * 1024 * 1024  # the `settings` fixture's limits
MAX_PIXELS = 4_000_000
MAX_INPUTS = 8


async def assert_refused(
    client: httpx.AsyncClient,
    model_calls: list[int],
    response: httpx.Response,
    status: int,
    error_type: str,
    *says: str,
) -> str:
    """`response` is `status` in the one error shape, its message says each of `says`, the model
    was not called, and the next good request is served. Returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "message", "request_id"}
    assert error["type"] == error_type
    assert error["request_id"] == response.headers["x-request-id"]
    message: str = error["message"]
    for fragment in says:
        assert fragment.lower() in message.lower(), message
    assert model_calls == [], "a refused request reached the model"
    good = await client.post(PREDICT, content=image_bytes(), headers=PNG)
    assert good.status_code == 200, good.text
    assert model_calls == [1]
    return message


def noisy_image(fmt: str, size: tuple[int, int] = (64, 64)) -> bytes:
    """An image that compresses badly, so that half of its bytes cut into the pixel data."""
    pixels = random.Random(0).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(width: int, height: int, idat: bytes, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb(side: int = 20_000) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels that compresses to a few dozen KB."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_with(side, side, idat, bit_depth=1, color_type=0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def files(*parts: tuple[bytes, str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.img", data, media)) for i, (data, media) in enumerate(parts)]


GOOD = image_bytes()
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'


# --- the body as a whole --------------------------------------------------------------------


async def test_empty_body_is_400(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, content=b"", headers=PNG)
    await assert_refused(client, model_calls, response, 400, "invalid_request", "empty")


async def test_body_over_the_limit_with_content_length_is_413(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    response = await client.post(PREDICT, content=bytes(MAX_BODY + 1), headers=PNG)
    assert response.request.headers["content-length"] == str(MAX_BODY + 1)
    await assert_refused(client, model_calls, response, 413, "payload_too_large", str(MAX_BODY))


async def test_body_over_the_limit_without_content_length_is_413(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield bytes(MAX_BODY // 2)

    response = await client.post(PREDICT, content=chunks(), headers=PNG)
    assert "content-length" not in response.request.headers  # sent chunked
    await assert_refused(client, model_calls, response, 413, "payload_too_large", str(MAX_BODY))


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_content_type_the_model_does_not_take_is_415(
    client: httpx.AsyncClient, model_calls: list[int], content_type: str
) -> None:
    response = await client.post(PREDICT, content=GOOD, headers={"Content-Type": content_type})
    await assert_refused(client, model_calls, response, 415, "unsupported_media_type", content_type)


async def test_no_content_type_is_sniffed_from_the_bytes(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    # Untyped bodies are judged by their bytes (inputs.UNTYPED): an image is served, anything else
    # is 422, never passed on to the model.
    image = await client.post(PREDICT, content=GOOD)
    assert "content-type" not in image.request.headers
    assert image.status_code == 200, image.text
    model_calls.clear()
    response = await client.post(PREDICT, content=b"plain words, no image")
    await assert_refused(client, model_calls, response, 422, "invalid_input", "input 0", "image")


# --- one raw image --------------------------------------------------------------------------


async def test_png_bytes_sent_as_jpeg_is_415(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, content=GOOD, headers={"Content-Type": "image/jpeg"})
    await assert_refused(client, model_calls, response, 415, "unsupported_media_type", "image/jpeg", "PNG")


async def test_svg_is_415(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, content=SVG, headers={"Content-Type": "image/svg+xml"})
    await assert_refused(client, model_calls, response, 415, "unsupported_media_type", "svg")


async def test_bytes_that_are_no_image_are_422(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, content=b"GIF89a? no, just text", headers=PNG)
    await assert_refused(client, model_calls, response, 422, "invalid_input", "not a recognisable image")


@pytest.mark.parametrize(("fmt", "media"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
async def test_truncated_image_is_422(
    client: httpx.AsyncClient, model_calls: list[int], fmt: str, media: str
) -> None:
    data = noisy_image(fmt)
    response = await client.post(PREDICT, content=data[: len(data) // 2], headers={"Content-Type": media})
    await assert_refused(client, model_calls, response, 422, "invalid_input", "truncated or corrupt")


async def test_image_over_the_pixel_limit_is_413(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, content=image_bytes(size=(2001, 2000)), headers=PNG)
    await assert_refused(
        client, model_calls, response, 413, "payload_too_large", "2001x2000", str(MAX_PIXELS)
    )


async def test_pixel_limit_is_judged_from_the_header_alone(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    # The header says 3000x3000 but no pixel data follows: decoding would find it truncated (422),
    # so 413 shows the size was refused before any decoding.
    lying = png_with(3000, 3000, zlib.compress(b"\x00" * 16))
    response = await client.post(PREDICT, content=lying, headers=PNG)
    await assert_refused(client, model_calls, response, 413, "payload_too_large", "3000x3000")


async def test_decompression_bomb_is_413_without_being_decoded(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    bomb = decompression_bomb()  # 400 million pixels: 1.2 GB as RGB
    assert len(bomb) < 100_000
    response = await client.post(PREDICT, content=bomb, headers=PNG)
    await assert_refused(client, model_calls, response, 413, "payload_too_large", "pixels")


# --- several inputs -------------------------------------------------------------------------


async def test_corrupt_second_file_of_three_is_422_naming_input_1(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    broken = noisy_image("JPEG")
    parts = files((GOOD, "image/png"), (broken[: len(broken) // 2], "image/jpeg"), (GOOD, "image/png"))
    response = await client.post(PREDICT, files=parts)
    message = await assert_refused(client, model_calls, response, 422, "invalid_input", "input 1")
    assert "input 0" not in message and "input 2" not in message


@pytest.mark.parametrize(
    "count",
    [
        MAX_INPUTS + 1,
        MAX_INPUTS + 2,
    ],
)
async def test_too_many_files_is_413(client: httpx.AsyncClient, model_calls: list[int], count: int) -> None:
    response = await client.post(PREDICT, files=files(*[(GOOD, "image/png")] * count))
    await assert_refused(client, model_calls, response, 413, "payload_too_large", str(count), str(MAX_INPUTS))


async def test_too_many_json_inputs_is_413(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, json={"inputs": [b64(GOOD)] * (MAX_INPUTS + 1)})
    await assert_refused(client, model_calls, response, 413, "payload_too_large", str(MAX_INPUTS))


@pytest.mark.parametrize(
    ("parts", "status", "error_type", "says"),
    [
        pytest.param(
            files((GOOD, "image/png"), (b"", "image/png")),
            422,
            "invalid_input",
            ["input 1", "empty"],
            id="zero-byte-file",
        ),
        pytest.param(
            files((GOOD, "image/png"), (SVG, "image/svg+xml")),
            415,
            "unsupported_media_type",
            ["input 1", "svg"],
            id="svg-file",
        ),
        pytest.param(
            files((GOOD, "image/png"), (GOOD, "image/jpeg")),
            415,
            "unsupported_media_type",
            ["input 1", "image/jpeg"],
            id="png-declared-jpeg",
        ),
        pytest.param(
            files((GOOD, "image/png"), (b"%PDF-1.7 nope", "application/octet-stream")),
            422,
            "invalid_input",
            ["input 1"],
            id="not-an-image",
        ),
        pytest.param(
            [("image", ("a.png", GOOD, "image/png"))],
            400,
            "invalid_request",
            ["'image'", "file"],
            id="wrong-field-name",
        ),
    ],
)
async def test_bad_multipart_part(
    client: httpx.AsyncClient,
    model_calls: list[int],
    parts: list[tuple[str, tuple[str, bytes, str]]],
    status: int,
    error_type: str,
    says: list[str],
) -> None:
    response = await client.post(PREDICT, files=parts)
    await assert_refused(client, model_calls, response, status, error_type, *says)


async def test_unexpected_multipart_field_is_400(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, files=files((GOOD, "image/png")), data={"top_k": "3"})
    await assert_refused(client, model_calls, response, 400, "invalid_request", "'top_k'")


async def test_text_field_named_file_is_422(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(PREDICT, files=files((GOOD, "image/png")), data={"file": "cat.png"})
    await assert_refused(client, model_calls, response, 422, "invalid_input", "input 0", "file upload")


async def test_multipart_without_boundary_is_400(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    response = await client.post(
        PREDICT, content=b"--x\r\n\r\n", headers={"Content-Type": "multipart/form-data"}
    )
    await assert_refused(client, model_calls, response, 400, "invalid_request", "multipart")


# --- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error_type", "says"),
    [
        pytest.param(b'{"inputs": [', 400, "invalid_request", ["not valid JSON"], id="not-json"),
        pytest.param(b"\xff\xfe{}", 400, "invalid_request", ["not valid JSON"], id="not-utf8"),
        pytest.param({"images": [b64(GOOD)]}, 400, "invalid_request", ['"inputs"'], id="missing-inputs"),
        pytest.param([b64(GOOD)], 400, "invalid_request", ['"inputs"'], id="top-level-list"),
        pytest.param({"inputs": {"a": b64(GOOD)}}, 400, "invalid_request", ["list"], id="inputs-not-a-list"),
        pytest.param({"inputs": []}, 400, "invalid_request", ["no inputs"], id="no-inputs"),
        pytest.param(
            {"inputs": [b64(GOOD)], "top_k": 1}, 400, "invalid_request", ["top_k"], id="unknown-field"
        ),
        pytest.param(
            {"inputs": [b64(GOOD), 3]}, 422, "invalid_input", ["input 1", "string"], id="non-string-item"
        ),
        pytest.param(
            {"inputs": [b64(GOOD), None]}, 422, "invalid_input", ["input 1", "string"], id="null-item"
        ),
        pytest.param(
            {"inputs": [b64(GOOD), "***not base64***"]},
            422,
            "invalid_input",
            ["input 1", "base64"],
            id="invalid-base64",
        ),
        pytest.param(
            {"inputs": [b64(GOOD), b64(GOOD), b64(b"plain text")]},
            422,
            "invalid_input",
            ["input 2", "not a recognisable image"],
            id="base64-of-no-image",
        ),
        pytest.param(
            {"inputs": [b64(GOOD), ""]}, 422, "invalid_input", ["input 1", "empty"], id="empty-string"
        ),
        pytest.param(
            {"inputs": [b64(GOOD), "data:image/svg+xml;base64," + b64(SVG)]},
            415,
            "unsupported_media_type",
            ["input 1", "svg"],
            id="svg-data-url",
        ),
        pytest.param(
            {"inputs": ["data:image/jpeg;base64," + b64(GOOD)]},
            415,
            "unsupported_media_type",
            ["input 0", "image/jpeg"],
            id="lying-data-url",
        ),
        pytest.param(
            {"inputs": [b64(GOOD), "data:image/png," + b64(GOOD)]},
            422,
            "invalid_input",
            ["input 1", "data URL"],
            id="data-url-without-base64",
        ),
    ],
)
async def test_bad_json_body(
    client: httpx.AsyncClient,
    model_calls: list[int],
    body: object,
    status: int,
    error_type: str,
    says: list[str],
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(PREDICT, content=content, headers={"Content-Type": "application/json"})
    await assert_refused(client, model_calls, response, status, error_type, *says)


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer mk_not_the_key_7Qp2xWv9", id="wrong-key"),
        pytest.param("Bearer " + ADMIN_KEY + "x", id="key-with-extra-char"),
        pytest.param("Basic " + base64.b64encode(ADMIN_KEY.encode()).decode(), id="basic-scheme"),
        pytest.param(ADMIN_KEY, id="no-scheme"),
        pytest.param("Bearer ", id="empty-bearer"),
    ],
)
async def test_bad_key_is_401_and_never_echoed(
    client: httpx.AsyncClient, model_calls: list[int], authorization: str | None
) -> None:
    request = client.build_request("POST", PREDICT, content=GOOD, headers=PNG)
    if authorization is None:
        del request.headers["authorization"]
    else:
        request.headers["authorization"] = authorization
    response = await client.send(request)
    assert response.headers["www-authenticate"] == "Bearer"
    await assert_refused(client, model_calls, response, 401, "authentication_error")
    sent = [word for word in (authorization or "").split() if word not in ("Bearer", "Basic")]
    for secret in [*sent, ADMIN_KEY]:
        assert secret not in response.text


# --- what the operator sees -----------------------------------------------------------------


async def test_metrics_count_each_refusal_by_status(client: httpx.AsyncClient) -> None:
    bad: list[dict[str, Any]] = [
        {"content": b"", "headers": PNG},  # 400
        {"json": {"inputs": 7}},  # 400
        {"content": bytes(MAX_BODY + 1), "headers": PNG},  # 413
        {"content": GOOD, "headers": {"Content-Type": "text/plain"}},  # 415
        {"content": b"no image", "headers": PNG},  # 422
        {"json": {"inputs": [b64(GOOD), "%%%"]}},  # 422
        {"json": {"inputs": [b64(GOOD), b64(GOOD[:20])]}},  # 422
    ]
    statuses = [(await client.post(PREDICT, **kwargs)).status_code for kwargs in bad]
    assert statuses == [400, 400, 413, 415, 422, 422, 422]
    assert (await client.post(PREDICT, content=GOOD, headers=PNG)).status_code == 200

    text = (await client.get("/metrics")).text
    for status, count in {"400": 2, "413": 1, "415": 1, "422": 3, "200": 1}.items():
        assert f'maas_requests_total{{model="tiny-vit",status="{status}"}} {count:.1f}' in text
    assert 'maas_inputs_total{model="tiny-vit"} 1.0' in text  # only the good request's input
