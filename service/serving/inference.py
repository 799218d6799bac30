"""Inference below the route: a request's inputs read and checked, decoded and preprocessed off
the event loop, queued on the model's least-loaded replica, and its outputs encoded."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from service.errors import CLIENT_CLOSED, GatewayError, InvalidInput
from service.observability.metrics import Metrics
from service.serving.admission import PreprocessGate
from service.serving.batching import Tally
from service.serving.deadlines import parse_timeout_ms
from service.serving.dispatch import infer
from service.serving.fairqueue import ANYONE, Share
from service.serving.inputs import LABELS_FIELD, InputLimits, RawInput, check_inputs, read_inputs
from service.serving.preprocess import PreprocessPool, prepare_features
from service.serving.registry import ModelEntry, ModelRegistry
from service.serving.runtime.base import Classification, ModelAdapter, Output, TaskParams, WithParams

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    output_key: str  # "predictions", "entities", "detections", "segments" or "embeddings": by task
    outputs: list[Any]  # one JSON-ready output per input, in input order


def deadline_of(header: str | None, default_ms: int, max_ms: int) -> float:
    """The request's deadline on the monotonic clock, from X-Request-Timeout-Ms or the default."""
    timeout_ms = parse_timeout_ms(header, max_ms) or default_ms
    return time.monotonic() + timeout_ms / 1000


class Inference:
    """Runs predict requests on the registry's models."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        limits: InputLimits,
        preprocess: PreprocessPool | None = None,
        gate: PreprocessGate | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        self.preprocess = preprocess
        self.gate = gate  # this process's admission to decoding (None: none)

    async def run(
        self,
        request: Request,
        entry: ModelEntry,
        *,
        body: bytes | None,
        top_k: int,
        threshold: float | None = None,
        deadline: float,
        tally: Tally,
        share: Share = ANYONE,
    ) -> Answer | None:
        """Answer the request's inputs (read from `body`, or streamed from `request` when None);
        None when the client left first (its queued inputs are dropped before the device)."""

        async def read() -> tuple[list[RawInput], TaskParams]:
            inputs, params = await read_inputs(request, entry.input_kind, self.limits, body)
            return inputs, dataclasses.replace(params, threshold=threshold)

        with self.registry.residency.hold(entry):  # not evicted for memory while the request is on it
            return await self._run(
                request, entry, read, top_k=top_k, deadline=deadline, tally=tally, share=share
            )

    async def run_inputs(
        self,
        request: Request,
        entry: ModelEntry,
        inputs: list[RawInput],
        *,
        top_k: int,
        deadline: float,
        tally: Tally,
        share: Share = ANYONE,
    ) -> Answer | None:
        """`run` for inputs that a protocol's route parsed from its own body shape (its body read
        already): the same checks and limits, queue, metrics and answer."""

        async def given() -> tuple[list[RawInput], TaskParams]:
            return check_inputs(inputs, self.limits), TaskParams()

        with self.registry.residency.hold(entry):  # not evicted for memory while the request is on it
            return await self._run(
                request, entry, given, top_k=top_k, deadline=deadline, tally=tally, share=share
            )

    async def _run(
        self,
        request: Request,
        entry: ModelEntry,
        read: Callable[[], Awaitable[tuple[list[RawInput], TaskParams]]],
        *,
        top_k: int,
        deadline: float,
        tally: Tally,
        share: Share,
    ) -> Answer | None:
        started = time.perf_counter()
        status = 500
        try:
            # this replica's adapter, kept: an unload meanwhile answers what was queued, then drops it
            adapter = (await self.registry.ensure_loaded(entry, deadline)).adapter
            with self.arriving(entry):
                inputs, params = await read()
                check_params(adapter, params)
                tally.inputs = len(inputs)
                features = await self.features(entry, adapter, inputs, deadline, share)
            queued = self.queue(
                entry, adapter, features, params, top_k=top_k, deadline=deadline, tally=tally, share=share
            )
            outputs = await unless_client_leaves(request, queued)
            status = 200 if outputs is not None else CLIENT_CLOSED
        except GatewayError as exc:
            status = exc.status_code
            raise
        finally:
            model = self.metrics.model_label(entry.name, entry.owner)
            self.metrics.requests.labels(model, str(status)).inc()
            self.metrics.request_seconds.labels(model, str(status)).observe(time.perf_counter() - started)
        if outputs is None:
            return None
        self.metrics.inputs.labels(self.metrics.model_label(entry.name, entry.owner)).inc(len(inputs))
        self.metrics.class_inputs.labels(share.service_class.value).inc(len(inputs))
        return Answer(adapter.output_key, [encode_output(o) for o in outputs])

    def arriving(self, entry: ModelEntry) -> contextlib.AbstractContextManager[None]:
        """Marks a request on its way to the model's queue while its inputs are read and decoded."""
        return entry.arriving_request()

    async def features(
        self, entry: ModelEntry, adapter: ModelAdapter, inputs: list[RawInput], deadline: float, share: Share
    ) -> list[Any]:
        """The inputs' features, off the event loop once `share`'s turn comes (see `prepare_features`);
        504 past the deadline."""
        kind = entry.input_kind
        features, where = await prepare_features(
            self.preprocess, adapter, kind, inputs, self.limits.image, deadline, gate=self.gate, share=share
        )
        self.metrics.preprocessed.labels(where).inc(len(features))
        return features

    async def queue(
        self,
        entry: ModelEntry,
        adapter: ModelAdapter,
        features: list[Any],
        params: TaskParams,
        *,
        top_k: int,
        deadline: float,
        tally: Tally,
        share: Share,
    ) -> list[Any]:
        """Queue one request's features on the model and await their outputs, in order."""
        return await infer_features(
            entry, adapter, features, params, top_k=top_k, deadline=deadline, tally=tally, share=share
        )


async def infer_features(
    entry: ModelEntry,
    adapter: ModelAdapter,
    features: list[Any],
    params: TaskParams,
    *,
    top_k: int,
    deadline: float | None,
    tally: Tally,
    share: Share,
    tenant_bound: bool = True,
) -> list[Output]:
    """Queue one request's features on the model within its manifest's queue bounds (the tenant's
    own bound unless `tenant_bound` is False), each carrying `params` where the model reads them;
    the outputs, in input order."""
    if adapter.reads_params:  # each input carries them through the batcher
        features = [WithParams(f, params) for f in features]
    assert entry.manifest is not None
    batching = entry.manifest.batching
    return await infer(
        entry,
        features,
        top_k=top_k,
        max_queue=batching.max_queue,
        deadline=deadline,
        tally=tally,
        share=share,
        max_tenant_queue=batching.tenant_queue_bound if tenant_bound else None,
    )


def check_params(adapter: ModelAdapter, params: TaskParams) -> None:
    """422 naming the field when the request's task parameters do not fit the model's task."""
    wants_labels = LABELS_FIELD in adapter.reads_params
    if wants_labels and not params.candidate_labels:
        raise InvalidInput(f"{LABELS_FIELD}: required by a zero-shot classification model")
    if params.candidate_labels and not wants_labels:
        raise InvalidInput(f"{LABELS_FIELD}: only zero-shot classification models take candidate labels")
    if params.threshold is not None and "threshold" not in adapter.reads_params:
        raise InvalidInput("threshold: only object detection and image segmentation models take a threshold")


def encode_output(output: Any) -> Any:
    """An output as JSON-ready data: classifications as {label, score} objects."""
    if output and isinstance(output[0], Classification):
        return [{"label": c.label, "score": c.score} for c in output]
    return output


async def _until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`; if the client disconnects first, cancel it and return None."""
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
