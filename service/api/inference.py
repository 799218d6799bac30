"""`POST /v1/models/{model}/predict`: parse, check, decode off the loop, batch, answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from service.api.deps import Admitted, AppMetrics, AppSettings, Caller, Registry
from service.errors import GatewayError, InvalidInput
from service.inputs import InputLimits, RawInput, decode_image, read_inputs
from service.registry import ModelEntry
from service.requests import request_id_of
from service.router import infer
from service.runtime.base import Classification
from service.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=1000, description="How many classes to return per input.")]
TimeoutMs = Annotated[
    str | None,
    Header(alias="X-Request-Timeout-Ms", description="Give up (504) if not served within this time."),
]
CLIENT_CLOSED = 499  # nginx's code for "client closed the request", in metrics only


def _prepare(entry: ModelEntry, inputs: list[RawInput], max_pixels: int) -> list[Any]:
    """Decode and preprocess every input (on a worker thread); the first bad input fails the request."""
    adapter = entry.adapter
    if entry.input_kind == "image":
        return [adapter.preprocess(decode_image(item, max_pixels)) for item in inputs]
    return [adapter.preprocess(item.data) for item in inputs]


def _encode(output: Any) -> Any:
    if output and isinstance(output[0], Classification):
        return [{"label": c.label, "score": c.score} for c in output]
    return output


def _deadline(header: str | None, settings: Settings) -> float:
    """The request's deadline on the monotonic clock, from X-Request-Timeout-Ms or the default."""
    timeout_ms = settings.request_timeout_ms
    if header is not None:
        if not header.strip().isdigit() or not 0 < int(header) <= settings.max_request_timeout_ms:
            raise InvalidInput(
                f"X-Request-Timeout-Ms must be an integer from 1 to {settings.max_request_timeout_ms}"
            )
        timeout_ms = int(header)
    return time.monotonic() + timeout_ms / 1000


async def _until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Any) -> Any:
    """Await `work`; if the client disconnects first, cancel it (its queued inputs are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


@router.post("/{model}/predict")
async def predict(
    model: str,
    request: Request,
    caller: Caller,
    registry: Registry,
    settings: AppSettings,
    metrics: AppMetrics,
    admission: Admitted,
    top_k: TopK = 5,
    timeout_ms: TimeoutMs = None,
) -> Response:
    """Classify images (or embed texts) with `model`; one result per input, in input order."""
    started = time.perf_counter()
    caller.require_scope("inference")
    entry = registry.get_for(caller, model)
    status = 500
    inputs: list[RawInput] = []
    try:
        deadline = _deadline(timeout_ms, settings)
        await registry.ensure_loaded(entry)
        limits = InputLimits(
            max_body_bytes=settings.max_body_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_inputs=settings.max_inputs_per_request,
            max_text_chars=settings.max_text_chars,
        )
        inputs = await read_inputs(request, entry.input_kind, limits)
        features = await anyio.to_thread.run_sync(_prepare, entry, inputs, settings.max_image_pixels)
        assert entry.manifest is not None
        outputs = await _unless_client_leaves(
            request,
            infer(
                entry, features, top_k=top_k, max_queue=entry.manifest.batching.max_queue, deadline=deadline
            ),
        )
        status = 200 if outputs is not None else CLIENT_CLOSED
    except GatewayError as exc:
        status = exc.status_code
        raise
    finally:
        metrics.requests.labels(model, str(status)).inc()
        metrics.request_seconds.labels(model, str(status)).observe(time.perf_counter() - started)
    if outputs is None:
        return Response(status_code=CLIENT_CLOSED)  # nobody is listening
    metrics.inputs.labels(model).inc(len(inputs))
    await admission.charge(len(inputs))
    body = {
        "id": request_id_of(request),
        "object": "prediction",
        "model": model,
        entry.adapter.output_key: [_encode(o) for o in outputs],
        "usage": {"inputs": len(inputs)},
    }
    return Response(orjson.dumps(body), media_type="application/json", headers=admission.headers)
