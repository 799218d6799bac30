"""One inference call, whichever protocol it came in by (predict, OpenAI embeddings, the Open
Inference Protocol): metered from the start (one usage event however it ends, priced per input),
the key's scope and the model checked, then admitted by the rate limits, the quota and the
in-flight cap. The route reads its inputs in its own body shape and answers in its own shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from service.api.deps import Admission, admit
from service.errors import GatewayError, InvalidInput
from service.gateway import Gateway
from service.metering.metered import MeteredRequest
from service.observability.middleware import request_id_of
from service.serving.fairqueue import ServiceClass, Share, parse_service_class
from service.serving.inference import Answer, deadline_of
from service.serving.inputs import RawInput
from service.serving.registry import ModelEntry
from service.tenancy.principal import Principal


@dataclass(frozen=True)
class InferenceCall:
    """A request let through to `entry`: what the route needs to run it and answer."""

    request: Request
    gateway: Gateway
    metered: MeteredRequest
    entry: ModelEntry
    deadline: float
    admission: Admission
    share: Share

    async def run(self, inputs: list[RawInput], *, top_k: int) -> Answer | None:
        """Infer `inputs`, parsed by the route from its protocol's body; None when the client left
        first. An answered call counts against the quota."""
        answer = await self.gateway.inference.run_inputs(
            self.request,
            self.entry,
            inputs,
            top_k=top_k,
            deadline=self.deadline,
            tally=self.metered.tally,
            share=self.share,
        )
        return await self._charged(answer)

    async def run_predict_body(
        self, body: bytes | None, *, top_k: int, threshold: float | None = None
    ) -> Answer | None:
        """`run` for predict's body shapes: read from `body`, or streamed when None."""
        answer = await self.gateway.inference.run(
            self.request,
            self.entry,
            body=body,
            top_k=top_k,
            threshold=threshold,
            deadline=self.deadline,
            tally=self.metered.tally,
            share=self.share,
        )
        return await self._charged(answer)

    async def _charged(self, answer: Answer | None) -> Answer | None:
        if answer is None:
            return None
        if self.metered.metered:  # on the quota in its usage event's commit: one group commit, not one each
            self.metered.counts_quota = self.admission.counts_quota
        else:
            await self.admission.charge(self.metered.tally.inputs)
        return answer

    def answer(self, body: dict[str, Any]) -> Response:
        """The 200 JSON answer: `body` with the call's usage (priced), and the rate-limit headers."""
        payload = self.metered.answer(body)
        return Response(payload, media_type="application/json", headers=self.admission.headers)

    def client_left(self) -> Response:
        """Nobody is listening: recorded free (499)."""
        return Response(status_code=self.metered.client_left())


@asynccontextmanager
async def inference_call(
    request: Request,
    gateway: Gateway,
    caller: Principal,
    model: str,
    *,
    timeout_ms: str | None,
    service_class: str | None,
    render_error: Callable[[Request, GatewayError], Response],
) -> AsyncIterator[InferenceCall]:
    """Meter, authorize (scope and model access first: a refusal spends no tokens) and admit a
    call to `model`; `timeout_ms` and `service_class` are the X-Request-Timeout-Ms and
    X-Service-Class headers, `render_error` draws an
    error in the route's shape (its answer is kept for Idempotency-Key replays)."""
    settings = gateway.settings
    metered = gateway.meter.request(
        request_id=request_id_of(request),
        tenant_id=caller.tenant_id,
        key_id=caller.key_id,
        model=model,
        render_error=lambda error: bytes(render_error(request, error).body),
    )
    async with metered:
        caller.require_scope("inference")
        entry = await gateway.registry.find_for(caller, model)
        deadline = deadline_of(timeout_ms, settings.request_timeout_ms, settings.max_request_timeout_ms)
        share = Share(caller.tenant_id or caller.tenant, caller.weight, _service_class(service_class))
        async with admit(request, gateway, caller) as admission:
            yield InferenceCall(request, gateway, metered, entry, deadline, admission, share)


def _service_class(header: str | None) -> ServiceClass:
    """The X-Service-Class header's class: `interactive` (the default) or `batch`; else 422."""
    try:
        return parse_service_class(header)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
