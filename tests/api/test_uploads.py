"""`POST /v1/files` with bodies meant to exhaust the gateway, on SQLite and PostgreSQL: refused by
`Content-Length` before any byte is read, cut off while streaming, zip bombs refused from the
zip's directory; each a 4xx in the one error shape that keeps nothing."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator

import httpx
import pytest

from service.settings import Settings
from tests.api.test_fine_tuning import upload
from tests.conftest import Gateway
from tests.training.zips import build_zip, colour_dataset, png, zero_bomb

pytestmark = pytest.mark.anyio

LIMIT = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # what the route allows on top of the file (service/api/files.py)
MB = 1024 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": LIMIT})


async def zeros(total: int, sent: list[int]) -> AsyncIterator[bytes]:
    """`total` zero bytes in 1 MiB chunks, counting in `sent` what the gateway read."""
    while sent[0] < total:
        sent[0] += MB
        yield bytes(MB)


async def assert_nothing_kept(
    http: httpx.AsyncClient, response: httpx.Response, status: int, says: str
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "request_id"}
    assert says in error["message"]
    assert (await http.get("/v1/files")).json()["data"] == []


async def test_an_upload_declaring_too_many_bytes_is_refused_before_any_is_read(gateway: Gateway) -> None:
    sent = [0]
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(300 * MB)}
    async with gateway.client() as http:
        response = await http.post("/v1/files", content=zeros(300 * MB, sent), headers=headers)
        await assert_nothing_kept(
            http,
            response,
            413,
            f"request body is {300 * MB} bytes; the limit is {LIMIT + MULTIPART_OVERHEAD}",
        )
    assert sent == [0]


async def test_an_upload_without_a_length_is_cut_off_at_the_limit(gateway: Gateway) -> None:
    sent = [0]

    async def body() -> AsyncIterator[bytes]:  # one file part that goes on and on
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        async for chunk in zeros(300 * MB, sent):
            yield chunk

    async with gateway.client() as http:
        response = await http.post(
            "/v1/files", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"}
        )
        await assert_nothing_kept(http, response, 413, f"exceeds the limit of {LIMIT + MULTIPART_OVERHEAD}")
    assert sent[0] <= LIMIT + MULTIPART_OVERHEAD + MB  # read up to the limit, then stopped


async def test_a_zip_bomb_is_refused_from_its_directory(gateway: Gateway) -> None:
    # 1 MB holding 10^9 zero bytes: under the 1 GiB total, over the 64 MiB for one image. It is
    # refused from the zip's directory, never decompressed (test_memory_bounds measures it).
    bomb = zero_bomb(10**9, "red/bomb.png")
    assert len(bomb) < LIMIT
    async with gateway.client() as http:
        response = await upload(http, bomb)
        await assert_nothing_kept(
            http,
            response,
            422,
            "entry 'red/bomb.png' unpacks to 1000000000 bytes; the limit for one image is 67108864",
        )


async def test_entries_that_cannot_be_read_in_bounded_steps_are_refused(gateway: Gateway) -> None:
    # bzip2 and LZMA decompress a whole stream block at once: 177 bytes of bzip2 are 200 MB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(5):
            archive.writestr(f"red/{i}.png", png((220, 30, 30), i), compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr(f"blue/{i}.png", png((30, 40, 220), i), compress_type=zipfile.ZIP_BZIP2)
    async with gateway.client() as http:
        response = await upload(http, buffer.getvalue())
        await assert_nothing_kept(
            http, response, 422, "entry 'blue/0.png': compression method 12 is not supported"
        )


@pytest.mark.parametrize(
    ("request_kwargs", "status", "says"),
    [
        pytest.param(
            {"content": b"PK", "headers": {"Content-Type": "application/zip"}}, 415, "multipart", id="raw-zip"
        ),
        pytest.param(
            {"files": {"dataset": ("d.zip", b"PK", "application/zip")}}, 400, "'dataset'", id="other-field"
        ),
        pytest.param(
            {"data": {"purpose": "fine-tune"}, "files": {}}, 415, "multipart", id="no-file-urlencoded"
        ),
        pytest.param(
            {"files": {"file": ("d.zip", b"PK", "application/zip")}, "data": {"purpose": "chat"}},
            422,
            "purpose",
            id="bad-purpose",
        ),
        pytest.param(
            {
                "files": [
                    ("file", ("a.zip", b"PK", "application/zip")),
                    ("file", ("b.zip", b"PK", "application/zip")),
                ]
            },
            400,
            "Too many files",
            id="two-files",
        ),
        pytest.param(
            {
                "files": {"file": ("d.zip", b"PK", "application/zip")},
                "headers": {"Content-Length": b"\xb2"},
            },
            400,
            "Content-Length",
            id="content-length-superscript",
        ),
    ],
)
async def test_malformed_uploads_are_4xx(
    gateway: Gateway, request_kwargs: dict[str, object], status: int, says: str
) -> None:
    async with gateway.client() as http:
        response = await http.post("/v1/files", **request_kwargs)  # type: ignore[arg-type]
        await assert_nothing_kept(http, response, status, says)
        good = await upload(http, colour_dataset(per_label=5))
        assert good.status_code == 201, good.text


async def test_a_file_part_without_a_file_is_422(gateway: Gateway) -> None:
    body = b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--x--\r\n'
    async with gateway.client() as http:
        response = await http.post(
            "/v1/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=x"}
        )
        await assert_nothing_kept(http, response, 422, "'file'")


async def test_a_valid_upload_is_kept_whole(gateway: Gateway) -> None:
    data = build_zip(
        {
            f"{c}/{i}.png": png(rgb, i)
            for c, rgb in [("red", (220, 30, 30)), ("blue", (30, 40, 220))]
            for i in range(5)
        }
    )
    async with gateway.client() as http:
        made = await upload(http, data)
        assert made.status_code == 201, made.text
        assert made.json()["bytes"] == len(data)
        assert made.json()["summary"]["train"] == {"blue": 5, "red": 5}


@pytest.mark.parametrize("key", [b"job\x001", "jöb".encode(), b"k" * 256])
async def test_a_bad_idempotency_key_on_a_fine_tune_is_400(gateway: Gateway, key: bytes) -> None:
    async with gateway.client() as http:
        file_id = (await upload(http, colour_dataset(per_label=5))).json()["id"]
        body = {"base_model": "tiny-vit", "training_file": file_id}
        response = await http.post("/v1/fine-tunes", json=body, headers={"Idempotency-Key": key})
        assert response.status_code == 400, response.text
        assert (
            "Idempotency-Key must be 1 to 255 printable ASCII characters"
            in response.json()["error"]["message"]
        )
        assert (await http.get("/v1/fine-tunes")).json()["data"] == []
