"""`POST /v1/models/{model}/predict`: authorize, admit, read the inputs, infer, answer, with the
request's usage event recorded on the way out (service/metering/metered.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from service.api.deps import App, Caller, admit
from service.bounds import MAX_TOP_K
from service.errors import error_response
from service.metering import Claim, request_hash
from service.observability.middleware import request_id_of
from service.serving.inference import deadline_of
from service.serving.inputs import read_body

router = APIRouter(prefix="/v1/models", tags=["inference"])

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to return per input.")]
TimeoutMs = Annotated[
    str | None,
    Header(alias="X-Request-Timeout-Ms", description="Give up (504) if not served within this time."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="A retry with the same key is answered once, billed once."),
]


@router.post("/{model}/predict")
async def predict(
    model: str,
    request: Request,
    caller: Caller,
    gateway: App,
    top_k: TopK = 5,
    timeout_ms: TimeoutMs = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Classify images (or embed texts) with `model`; one result per input, in input order.

    The request's usage event is committed before the answer goes out (errors too, with their
    status). With an Idempotency-Key, a retry gets the first answer and is not billed again."""
    settings = gateway.settings
    metered = gateway.meter.request(
        request_id=request_id_of(request),
        tenant_id=caller.tenant_id,
        key_id=caller.key_id,
        model=model,
        render_error=lambda error: bytes(error_response(request, error).body),
    )
    async with metered:
        caller.require_scope("inference")  # scope and model access first: a refusal spends no tokens
        entry = await gateway.registry.find_for(caller, model)
        deadline = deadline_of(timeout_ms, settings.request_timeout_ms, settings.max_request_timeout_ms)
        async with admit(request, gateway, caller) as admission:
            body = None  # streamed, unless an Idempotency-Key needs it whole to hash it
            if idempotency_key is not None and metered.metered:
                body = await read_body(request, settings.max_body_bytes)
                content_type = request.headers.get("content-type", "")
                digest = request_hash(model, request.url.query, content_type, body)
                if (replay := await metered.claim(idempotency_key, digest)) is not None:
                    return _replay(request, replay)
            answer = await gateway.inference.run(
                request, entry, body=body, top_k=top_k, deadline=deadline, tally=metered.tally
            )
            if answer is None:  # the client left: nobody is listening, and it is not charged
                return Response(status_code=metered.client_left())
            await admission.charge(metered.tally.inputs)
            payload = metered.answer(
                {
                    "id": metered.request_id,
                    "object": "prediction",
                    "model": model,
                    answer.output_key: answer.outputs,
                }
            )
            return Response(payload, media_type="application/json", headers=admission.headers)


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
