"""`POST /v1/models/{model}/predict`: authorize, admit, read the inputs, infer, answer, with the
request's usage event recorded on the way out (service/api/calls.py, service/metering/metered.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from service.api import schemas as s
from service.api.calls import inference_call
from service.api.deps import App, Caller
from service.bounds import MAX_TOP_K
from service.errors import error_response
from service.metering import Claim, request_hash
from service.serving.inputs import read_body

router = APIRouter(prefix="/v1/models", tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to return per input.")]
Threshold = Annotated[
    float | None,
    Query(
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Object detection, image segmentation: the lowest score a box or segment may have.",
    ),
]
TimeoutMs = Annotated[
    str | None,
    Header(alias="X-Request-Timeout-Ms", description="Give up (504) if not served within this time."),
]
ServiceClassHeader = Annotated[
    str | None,
    Header(
        alias="X-Service-Class",
        description="`interactive` (default) or `batch`: batch inputs only fill room interactive ones leave.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="A retry with the same key is answered once, billed once."),
]


PREDICT_BODY = {  # read by the route itself (streamed, bounded): FastAPI cannot infer it
    "required": True,
    "content": {
        "application/json": {"schema": s.PredictInputs.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "candidate_labels": {"type": "array", "items": {"type": "string"}},
                },
            }
        },
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "text/plain": {"schema": {"type": "string"}},
    },
}


@router.post(
    "/{model}/predict",
    openapi_extra={"requestBody": PREDICT_BODY},
    **s.documented(s.Prediction, *s.AUTHENTICATED, 404, 409, 413, 415, 429, 503, 504),
)
async def predict(
    model: str,
    request: Request,
    caller: Caller,
    gateway: App,
    top_k: TopK = 5,
    threshold: Threshold = None,
    timeout_ms: TimeoutMs = None,
    service_class: ServiceClassHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Classify images (or embed texts) with `model`; one result per input, in input order.

    The request's usage event is committed before the answer goes out (errors too, with their
    status). With an Idempotency-Key, a retry gets the first answer and is not billed again."""
    async with inference_call(
        request,
        gateway,
        caller,
        model,
        timeout_ms=timeout_ms,
        service_class=service_class,
        render_error=error_response,
    ) as call:
        body = None  # streamed, unless an Idempotency-Key needs it whole to hash it
        if idempotency_key is not None and call.metered.metered:
            body = await read_body(request, gateway.settings.max_body_bytes)
            content_type = request.headers.get("content-type", "")
            digest = request_hash(model, request.url.query, content_type, body)
            if (replay := await call.metered.claim(idempotency_key, digest)) is not None:
                return _replay(request, replay)
        answer = await call.run_predict_body(body, top_k=top_k, threshold=threshold)
        if answer is None:  # the client left: nobody is listening, and it is not charged
            return call.client_left()
        return call.answer(
            {
                "id": call.metered.request_id,
                "object": "prediction",
                "model": model,
                answer.output_key: answer.outputs,
            }
        )


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
