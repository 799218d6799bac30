"""Requests against an in-process gateway, in a process of their own: prints each answer and how
far it raised the process's peak memory (ru_maxrss) above what the process needed before.

Run by test_memory_bounds.py as `python -m tests.api.memory_probe WORKDIR`; WORKDIR holds
`models/` (the gateway's models folder) and `inputs/` (the request bodies, made by the test, so
that building them does not count here). Prints one JSON object: per case, the answer's status
and body, the growth in MB and how many body bytes the gateway read.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

from service.app import create_app
from service.settings import Settings

ADMIN_KEY = "mk_memory_probe_admin_key_0123456789abcdef"
MB = 1024 * 1024
TORCH_MODEL = "/v1/models/colour/predict"
VIT_MODEL = "/v1/models/vit/predict"
VIT_EXACT_MODEL = "/v1/models/vit-exact/predict"  # the model's own image processor
Case = Callable[[httpx.AsyncClient, Path], Awaitable[tuple[httpx.Response, int]]]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def zeros(total: int, sent: list[int]) -> AsyncIterator[bytes]:
    """`total` zero bytes in 1 MiB chunks, counting in `sent` what the server asked for."""
    chunk = bytes(MB)
    while sent[0] < total:
        sent[0] += len(chunk)
        yield chunk


async def predict(
    http: httpx.AsyncClient, inputs: Path, name: str, model: str = TORCH_MODEL
) -> tuple[httpx.Response, int]:
    data = (inputs / name).read_bytes()
    return await http.post(model, content=data, headers={"Content-Type": "image/png"}), len(data)


async def upload(http: httpx.AsyncClient, inputs: Path, name: str) -> tuple[httpx.Response, int]:
    data = (inputs / name).read_bytes()
    files = {"file": ("dataset.zip", data, "application/zip")}
    return await http.post("/v1/files", files=files, data={"purpose": "fine-tune"}), len(data)


async def declared_300mb(http: httpx.AsyncClient, inputs: Path) -> tuple[httpx.Response, int]:
    sent = [0]
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(300 * MB)}
    response = await http.post("/v1/files", content=zeros(300 * MB, sent), headers=headers)
    return response, sent[0]


async def chunked_300mb(http: httpx.AsyncClient, inputs: Path) -> tuple[httpx.Response, int]:
    sent = [0]
    headers = {"Content-Type": "multipart/form-data; boundary=x"}

    async def body() -> AsyncIterator[bytes]:  # one file part that never ends
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        async for chunk in zeros(300 * MB, sent):
            yield chunk

    return await http.post("/v1/files", content=body(), headers=headers), sent[0]


# Run in this order: a case's growth is measured from the peak before the first one, so it is an
# upper bound of its own growth whatever ran before it.
CASES: dict[str, Case] = {
    "thin-image": lambda http, inputs: predict(http, inputs, "thin.png"),
    "zip-bomb": lambda http, inputs: upload(http, inputs, "bomb.zip"),
    "declared-300mb": declared_300mb,
    "chunked-300mb": chunked_300mb,
    "largest-image-torch": lambda http, inputs: predict(http, inputs, "largest.png"),
    "largest-image-vit": lambda http, inputs: predict(http, inputs, "largest.png", VIT_MODEL),
    "largest-image-vit-exact": lambda http, inputs: predict(http, inputs, "largest.png", VIT_EXACT_MODEL),
}


async def main(workdir: Path) -> dict[str, dict[str, object]]:
    settings = Settings(
        models_dir=workdir / "models", data_dir=workdir / "var", admin_key=ADMIN_KEY, devices="cpu"
    )
    inputs = workdir / "inputs"
    results: dict[str, dict[str, object]] = {}
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as http:
            for warm_up in (
                predict(http, inputs, "small.png"),
                predict(http, inputs, "small.png", VIT_MODEL),
                predict(http, inputs, "small.png", VIT_EXACT_MODEL),
                upload(http, inputs, "small.zip"),
            ):
                response, _ = await warm_up
                assert response.status_code in (200, 201), response.text
            before = peak_mb()
            for name, case in CASES.items():
                response, sent = await case(http, inputs)
                growth = peak_mb() - before
                results[name] = {
                    "status": response.status_code,
                    "body": response.json(),
                    "growth_mb": growth,
                    "sent": sent,
                }
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
