"""`POST /v1/models/{model}/predict`: parse, check, decode off the loop, one forward pass, answer."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request

from service.api.deps import Admitted, AppMetrics, AppSettings, Caller, Registry
from service.errors import GatewayError
from service.inputs import InputLimits, RawInput, decode_image, read_inputs
from service.registry import ModelEntry
from service.requests import request_id_of
from service.runtime.base import Classification

router = APIRouter(prefix="/v1/models", tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=1000, description="How many classes to return per input.")]


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
) -> dict[str, Any]:
    """Classify images (or embed texts) with `model`; one result per input, in input order."""
    started = time.perf_counter()
    caller.require_scope("inference")
    entry = registry.get(model)
    caller.require_model(model)
    status = 500
    try:
        await registry.ensure_loaded(entry)
        limits = InputLimits(
            max_body_bytes=settings.max_body_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_inputs=settings.max_inputs_per_request,
            max_text_chars=settings.max_text_chars,
        )
        inputs = await read_inputs(request, entry.input_kind, limits)
        features = await anyio.to_thread.run_sync(_prepare, entry, inputs, settings.max_image_pixels)
        outputs = await entry.run(features, top_k=top_k)
        status = 200
    except GatewayError as exc:
        status = exc.status_code
        raise
    finally:
        metrics.requests.labels(model, str(status)).inc()
        metrics.request_seconds.labels(model, str(status)).observe(time.perf_counter() - started)
    metrics.inputs.labels(model).inc(len(inputs))
    await admission.charge(len(inputs))
    return {
        "id": request_id_of(request),
        "object": "prediction",
        "model": model,
        entry.adapter.output_key: [_encode(o) for o in outputs],
        "usage": {"inputs": len(inputs)},
    }
