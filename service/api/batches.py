"""`/v1/batches`: create, list, show and cancel the caller's asynchronous batch jobs, and read a
job's results file (JSON lines, one per input, in input order)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from service.api import schemas as s
from service.api.deps import App, Batches, BatchSubmitter, Store, tenant_of
from service.batches.store import describe_batch
from service.bounds import Ref
from service.errors import InvalidInput
from service.training.store import BATCH_PURPOSE

router = APIRouter(prefix="/v1/batches", tags=["batches"])
RESULTS_MEDIA_TYPE = "application/jsonl"


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Ref
    input_file: Ref


@router.post("", status_code=201, **s.documented(s.Batch, *s.AUTHENTICATED, 404, 429, status=201))
def create_batch(
    body: BatchIn, caller: BatchSubmitter, batches: Batches, files: Store, gateway: App
) -> dict[str, Any]:
    """Queue the inputs of an uploaded file (purpose `batch`) for `model`, in the batch class."""
    tenant = tenant_of(caller)
    # on the event loop, which owns the registry: 404/403 as predict would answer
    entry = anyio.from_thread.run(gateway.registry.find_for, caller, body.model)
    file = files.get_file(tenant, body.input_file)
    if file.purpose != BATCH_PURPOSE:
        raise InvalidInput(f"input_file: {body.input_file!r} was uploaded for {file.purpose!r}, not 'batch'")
    if file.summary.get("format") == "zip" and entry.input_kind != "image":
        raise InvalidInput(f"input_file: a zip of images, but model {body.model!r} takes {entry.input_kind}")
    gateway.quota.check(caller)  # 429 once the monthly quota is spent: a job's inputs count against it
    job = batches.create(tenant, caller.key_id, body.model, body.input_file, int(file.summary["inputs"]))
    gateway.batch_runner.notify()  # runs here at once if this replica runs jobs
    return describe_batch(job)


@router.get("", **s.documented(s.BatchList, *s.AUTHENTICATED))
def list_batches(caller: BatchSubmitter, batches: Batches) -> dict[str, Any]:
    return {"object": "list", "data": [describe_batch(j) for j in batches.list(tenant_of(caller))]}


@router.get("/{batch_id}", **s.documented(s.Batch, *s.AUTHENTICATED, 404))
def get_batch(batch_id: str, caller: BatchSubmitter, batches: Batches) -> dict[str, Any]:
    return describe_batch(batches.get(tenant_of(caller), batch_id))


@router.post("/{batch_id}/cancel", **s.documented(s.Batch, *s.AUTHENTICATED, 404, 409))
def cancel_batch(batch_id: str, caller: BatchSubmitter, batches: Batches, gateway: App) -> dict[str, Any]:
    job = batches.cancel(tenant_of(caller), batch_id)
    gateway.batch_runner.cancel(batch_id)  # stops after its next line if this replica runs it
    return describe_batch(job)


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "JSON lines, one per input processed so far, in input order: `index`, "
            "`input` (a zip's entry), and the model's output key (`predictions`, ...) or `error`.",
            "content": {RESULTS_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **s.documented(None, *s.AUTHENTICATED, 404)["responses"],
    },
)
def batch_results(batch_id: str, caller: BatchSubmitter, batches: Batches) -> StreamingResponse:
    chunks = batches.results(tenant_of(caller), batch_id)
    first = next(chunks, b"")  # 404 before the answer starts
    return StreamingResponse(_then(first, chunks), media_type=RESULTS_MEDIA_TYPE)


def _then(first: bytes, rest: Any) -> Any:
    yield first
    yield from rest
