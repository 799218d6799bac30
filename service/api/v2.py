"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP API) under `/v2`, with errors in its
shape, `{"error": "..."}` (service/protocols/v2.py). Health and server metadata need no key, like
/healthz and /readyz; a model's metadata and readiness take a key, and `infer` the keys, limits
and metering of predict (service/api/calls.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.calls import inference_call
from service.api.deps import App, Caller, Registry
from service.api.error_shapes import ErrorShape
from service.api.inference import ServiceClassHeader, TimeoutMs
from service.protocols import v2
from service.serving.inputs import read_body
from service.serving.registry import ModelStatus

ERRORS = ErrorShape(v2.error_body, v2.V2Error)
router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], route_class=ERRORS.route_class())
MODEL_ERRORS = ERRORS.responses([400, 401, 403, 404, 422, 503])


@router.get("", response_model=v2.ServerMetadata)
async def server_metadata(request: Request) -> v2.ServerMetadata:
    return v2.ServerMetadata(name="maas-gateway", version=request.app.version, extensions=v2.EXTENSIONS)


@router.get("/health/live", response_model=v2.Liveness)
async def live() -> v2.Liveness:
    """200 while the process lives."""
    return v2.Liveness(live=True)


@router.get(
    "/health/ready",
    response_model=v2.Readiness,
    responses={503: {"model": v2.Readiness, "description": "Models still loading, or draining."}},
)
async def ready(gateway: App) -> JSONResponse:
    """200 once every preload model is ready or has failed as unavailable (as /readyz); 503 before and
    while draining."""
    is_ready = gateway.registry.preload_done.is_set() and not gateway.draining
    if not is_ready:
        return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"ready": True})


@router.get("/models/{model}", response_model=v2.ModelMetadata, responses=MODEL_ERRORS)
async def model_metadata(model: str, caller: Caller, registry: Registry) -> v2.ModelMetadata:
    """The model's input and output tensors: names, datatypes and shapes."""
    return v2.model_metadata(await registry.state_for(caller, model))


@router.get(
    "/models/{model}/ready",
    response_model=v2.ModelReadiness,
    responses={**MODEL_ERRORS, 503: {"model": v2.ModelReadiness, "description": "Not loaded (yet)."}},
)
async def model_ready(model: str, caller: Caller, registry: Registry) -> JSONResponse:
    """200 when the model is loaded and serving; 503 otherwise (not loaded yet, or unavailable)."""
    entry = await registry.state_for(caller, model)
    is_ready = entry.status is ModelStatus.READY
    return JSONResponse({"name": entry.name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.post("/models/{model}/infer", response_model=v2.InferResponse, responses=ERRORS.responses())
async def infer(
    model: str,
    request: Request,
    caller: Caller,
    gateway: App,
    timeout_ms: TimeoutMs = None,
    service_class: ServiceClassHeader = None,
) -> Response:
    """Run the model on one input tensor, in JSON or with the binary data extension.

    Metered like predict: one usage event per request, priced per input (per tensor element)."""
    async with inference_call(
        request,
        gateway,
        caller,
        model,
        timeout_ms=timeout_ms,
        service_class=service_class,
        render_error=ERRORS.response,
    ) as call:
        body = await read_body(request, gateway.settings.max_body_bytes)
        parsed = v2.parse_infer(body, request.headers.get(v2.HEADER_LENGTH))
        kind = v2.model_kind(call.entry)
        inputs, wanted = v2.inputs_of(parsed, kind), v2.requested_outputs(parsed, kind)
        answer = await call.run(inputs, top_k=parsed.top_k)
        if answer is None:  # the client left: nobody is listening, and it is not charged
            return call.client_left()
        tensors = v2.output_tensors(kind, answer)
        result = v2.infer_answer(model, call.metered.request_id, parsed, wanted, tensors)
        if not result.binary:
            return call.answer(result.body)
        header = call.metered.answer(result.body)
        headers = {**call.admission.headers, v2.HEADER_LENGTH: str(len(header))}
        return Response(header + result.binary, media_type="application/octet-stream", headers=headers)
