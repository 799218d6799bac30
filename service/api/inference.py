"""`POST /v1/models/{model}/predict`: parse, check, decode off the loop, batch, answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from service.api.deps import Admitted, AppMeter, AppMetrics, AppSettings, Caller, Registry
from service.errors import Conflict, GatewayError, InvalidInput, InvalidRequest, error_response
from service.metering import Claim, ClaimState, Meter, Outcome, Usage, format_micro, request_hash
from service.metering.idempotency import MAX_KEY_CHARS
from service.observability.metrics import Metrics
from service.observability.middleware import request_id_of
from service.serving.batching import Tally
from service.serving.dispatch import infer
from service.serving.inputs import InputLimits, RawInput, decode_image, read_body, read_inputs
from service.serving.preprocess import PreprocessPool
from service.serving.registry import ModelEntry, ModelRegistry
from service.serving.runtime.base import Classification
from service.settings import Settings
from service.tenancy.principal import Principal

router = APIRouter(prefix="/v1/models", tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=1000, description="How many classes to return per input.")]
TimeoutMs = Annotated[
    str | None,
    Header(alias="X-Request-Timeout-Ms", description="Give up (504) if not served within this time."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="A retry with the same key is answered once, billed once."),
]
CLIENT_CLOSED = 499  # nginx's code for "client closed the request", in metrics only


def _prepare(entry: ModelEntry, inputs: list[RawInput], max_pixels: int) -> list[Any]:
    """Decode and preprocess every input (on a worker thread); the first bad input fails the request."""
    adapter = entry.adapter
    if entry.input_kind == "image":
        return [adapter.preprocess(decode_image(item, max_pixels)) for item in inputs]
    return [adapter.preprocess(item.data) for item in inputs]


async def _features(
    request: Request, entry: ModelEntry, inputs: list[RawInput], max_pixels: int, metrics: Metrics
) -> list[Any]:
    """The inputs' features: from the preprocessing processes where the model's image processor can
    run there (MAAS_PREPROCESS_PROCESSES), else on a worker thread of this process."""
    pool: PreprocessPool | None = request.app.state.preprocess
    if pool is not None and entry.input_kind == "image":
        processor = pool.processor_of(entry.adapter)
        if processor is not None:
            features = await pool.prepare(processor, inputs, max_pixels)
            metrics.preprocessed.labels("process").inc(len(features))
            return features
    features = await anyio.to_thread.run_sync(_prepare, entry, inputs, max_pixels)
    metrics.preprocessed.labels("thread").inc(len(features))
    return features


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


def _replay(request: Request, claim: Claim) -> Response:
    """The stored answer of the first request with this Idempotency-Key, with its request id."""
    assert claim.request_id is not None and claim.status is not None
    request.scope["state"]["request_id"] = claim.request_id  # X-Request-Id, set on the way out
    return Response(
        claim.body or b"",
        status_code=claim.status,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


async def _claim(
    request: Request, model: str, key: str, caller: Principal, meter: Meter, settings: Settings
) -> tuple[bytes, Claim]:
    """Read the body and claim the key for this request: 422 when the key was used for another
    request, 409 while its first request runs."""
    if not 0 < len(key) <= MAX_KEY_CHARS:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters")
    body = await read_body(request, settings.max_body_bytes)
    digest = request_hash(model, request.url.query, request.headers.get("content-type", ""), body)
    assert caller.tenant_id is not None
    claim = await meter.claim(caller.tenant_id, key, digest, request_id_of(request))
    if claim.state in (ClaimState.MISMATCH, ClaimState.RUNNING):
        meter.metrics.replays.labels(claim.state.value).inc()
    if claim.state is ClaimState.MISMATCH:
        raise InvalidInput("this Idempotency-Key was used for a different request; use a new key")
    if claim.state is ClaimState.RUNNING:
        raise Conflict("a request with this Idempotency-Key is still running; retry later")
    return body, claim


@router.post("/{model}/predict")
async def predict(
    model: str,
    request: Request,
    caller: Caller,
    registry: Registry,
    settings: AppSettings,
    metrics: AppMetrics,
    admission: Admitted,
    meter: AppMeter,
    top_k: TopK = 5,
    timeout_ms: TimeoutMs = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Classify images (or embed texts) with `model`; one result per input, in input order.

    The request's usage event is committed before the answer goes out (errors too, with their
    status). With an Idempotency-Key, a retry gets the first answer and is not billed again."""
    request_id = request_id_of(request)
    tenant_id = caller.tenant_id if meter.enabled else None  # None: not metered
    key = idempotency_key if tenant_id is not None else None
    body: bytes | None = None
    if key is not None:
        body, claim = await _claim(request, model, key, caller, meter, settings)
        if claim.state is ClaimState.REPLAY:
            meter.metrics.replays.labels("replayed").inc()
            return _replay(request, claim)
    tally = Tally()

    def usage_of(status: int) -> Usage:
        assert tenant_id is not None
        return meter.usage(
            request_id=request_id,
            tenant_id=tenant_id,
            key_id=caller.key_id,
            model=model,
            inputs=tally.inputs,
            status=status,
            tally=tally,
        )

    try:
        answer = await _answer(
            model, request, caller, registry, settings, metrics, top_k, timeout_ms, body, tally
        )
    except Exception as exc:
        if tenant_id is None:
            raise
        error = exc if isinstance(exc, GatewayError) else GatewayError("internal error")
        outcome = None
        if key is not None:  # a server error frees the key for a retry; a client error is kept
            failed = error.status_code >= 500
            stored = None if failed else bytes(error_response(request, error).body)
            outcome = Outcome(tenant_id, key, request_id, error.status_code, stored, release=failed)
        await meter.record(usage_of(error.status_code), outcome)
        raise
    if answer is None:  # the client left: nobody is listening, and it is not charged
        if tenant_id is not None:
            released = Outcome(tenant_id, key, request_id, CLIENT_CLOSED, None, True) if key else None
            await meter.record(usage_of(CLIENT_CLOSED), released)
        return Response(status_code=CLIENT_CLOSED)
    await admission.charge(answer.inputs)
    usage_body: dict[str, Any] = {"inputs": answer.inputs}
    usage = usage_of(200) if tenant_id is not None else None
    if usage is not None:
        usage_body.update(
            compute_ms=round(usage.compute_us / 1000, 3),
            cost_micro=usage.amount_micro,
            cost=format_micro(usage.amount_micro),
        )
    payload = orjson.dumps(
        {
            "id": request_id,
            "object": "prediction",
            "model": model,
            answer.output_key: answer.outputs,
            "usage": usage_body,
        }
    )
    if usage is not None:
        done = Outcome(usage.tenant_id, key, request_id, 200, payload) if key is not None else None
        await meter.record(usage, done)
    return Response(payload, media_type="application/json", headers=admission.headers)


@dataclass
class _Answer:
    inputs: int
    output_key: str
    outputs: list[Any]


async def _answer(
    model: str,
    request: Request,
    caller: Principal,
    registry: ModelRegistry,
    settings: Settings,
    metrics: Metrics,
    top_k: int,
    timeout_ms: str | None,
    body: bytes | None,
    tally: Tally,
) -> _Answer | None:
    """Run the request on the model; None when the client left first."""
    started = time.perf_counter()
    caller.require_scope("inference")
    entry = await registry.find_for(caller, model)
    status = 500
    inputs: list[RawInput] = []
    try:
        deadline = _deadline(timeout_ms, settings)
        await registry.ensure_loaded(entry)
        with entry.arriving_request():
            limits: InputLimits = request.app.state.input_limits  # built once, from the settings
            inputs = await read_inputs(request, entry.input_kind, limits, body)
            tally.inputs = len(inputs)
            features = await _features(request, entry, inputs, settings.max_image_pixels, metrics)
        assert entry.manifest is not None
        outputs = await _unless_client_leaves(
            request,
            infer(
                entry,
                features,
                top_k=top_k,
                max_queue=entry.manifest.batching.max_queue,
                deadline=deadline,
                tally=tally,
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
        return None
    metrics.inputs.labels(model).inc(len(inputs))
    return _Answer(len(inputs), entry.adapter.output_key, [_encode(o) for o in outputs])
