"""`POST /v1/embeddings`: OpenAI's embeddings API over the gateway's text embedding models, with
the keys, limits and metering of predict (service/api/calls.py) and errors in OpenAI's shape
(service/protocols/openai.py). `GET /v1/models` (service/api/models.py) serves OpenAI's
`models.list()` as it is."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response

from service.api.calls import inference_call
from service.api.deps import App, Caller
from service.api.error_shapes import ErrorShape
from service.api.inference import ServiceClassHeader, TimeoutMs
from service.protocols import openai
from service.serving.inputs import RawInput, read_body

ERRORS = ErrorShape(openai.error_body, openai.OpenAIError)
router = APIRouter(tags=["openai"], route_class=ERRORS.route_class())


@router.post(
    "/v1/embeddings",
    response_model=openai.EmbeddingList,
    responses=ERRORS.responses(),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": openai.EmbeddingRequest.model_json_schema()}},
        }
    },
)
async def create_embeddings(
    request: Request,
    caller: Caller,
    gateway: App,
    timeout_ms: TimeoutMs = None,
    service_class: ServiceClassHeader = None,
) -> Response:
    """Embed one text or a list of texts with a text embedding model, as OpenAI's API does.

    Metered like predict: one usage event per request, priced per input."""
    params = openai.parse_request(await read_body(request, gateway.settings.max_body_bytes))
    async with inference_call(
        request,
        gateway,
        caller,
        params.model,
        timeout_ms=timeout_ms,
        service_class=service_class,
        render_error=ERRORS.response,
    ) as call:
        openai.check_model(call.entry)
        texts = openai.texts_of(params)
        adapter = (await gateway.registry.ensure_loaded(call.entry, call.deadline)).adapter
        native = adapter.embedding_size
        assert native is not None  # a loaded text embedding model
        size = openai.output_size(call.entry, params.dimensions, native)
        answer = await call.run([RawInput(i, text) for i, text in enumerate(texts)], top_k=1)
        if answer is None:  # the client left: nobody is listening, and it is not charged
            return call.client_left()
        tokens = await anyio.to_thread.run_sync(adapter.token_counts, texts)
        assert call.entry.manifest is not None
        body = openai.embedding_list(
            params, answer.outputs, size=size, renormalize=call.entry.manifest.normalize, tokens=sum(tokens)
        )
        return call.answer(body)
