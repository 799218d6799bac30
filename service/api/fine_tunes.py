"""`/v1/fine-tunes`: create, list, show, follow (events) and cancel the caller's fine-tuning jobs."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field

from service.api import schemas as s
from service.api.deps import App, FineTuner, Store, tenant_of
from service.bounds import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_SEED,
    Ref,
    Text,
)
from service.errors import InvalidInput
from service.metering.idempotency import parse_idempotency_key
from service.serving.runtime.sources import SourceError, resolve_local_folder
from service.training.dataset_files import DATASET_KINDS, DESCRIBED, kind_of
from service.training.store import FineTuneStore, JobSpec, describe_event, describe_job
from service.training.trainer import LORA_TARGETS, lora_targets_in

router = APIRouter(prefix="/v1/fine-tunes", tags=["fine-tuning"])
SUFFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")


class HyperparametersIn(BaseModel):
    """The ranges are `service.bounds`'s (docs: "Value ranges")."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(5e-4, gt=0, le=MAX_LEARNING_RATE, allow_inf_nan=False)
    batch_size: int = Field(16, ge=1, le=MAX_BATCH_SIZE)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    lora_rank: int = Field(8, ge=1, le=MAX_LORA_RANK, description="method lora: the adapters' rank")
    lora_alpha: int = Field(
        16, ge=1, le=MAX_LORA_ALPHA, description="method lora: adapter scale is alpha / rank"
    )


class FineTuneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: Ref
    training_file: Ref
    validation_file: Ref | None = None
    hyperparameters: HyperparametersIn = HyperparametersIn()
    method: Literal["full", "lora"] = Field(
        "full", description="full: every weight; lora: PEFT adapters over the frozen base (a small artifact)"
    )
    suffix: Text | None = Field(None, description="1-20 of a-z 0-9 -, put in the model's name")
    priority: Literal["high", "normal", "low"] = Field(
        "normal",
        description="The queue is FIFO per priority: high jobs run before normal, normal before low.",
    )


@router.post("", status_code=201, **s.documented(s.FineTuneJob, *s.AUTHENTICATED, 404, 409, status=201))
def create_job(
    body: FineTuneIn,
    caller: FineTuner,
    store: Store,
    gateway: App,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    tenant = tenant_of(caller)
    idempotency_key = parse_idempotency_key(idempotency_key)
    # on the event loop, which owns the registry: finds a base another replica fine-tuned
    base = anyio.from_thread.run(gateway.registry.find_for, caller, body.base_model)
    if base.manifest is None or base.manifest.task not in DATASET_KINDS:
        tasks = " or ".join(DATASET_KINDS)
        raise InvalidInput(f"base model {body.base_model!r} is not a model that fine-tunes ({tasks})")
    try:
        local = base.manifest.adapter == "transformers" and resolve_local_folder(
            base.manifest.source, base.manifest_path.parent
        )
    except SourceError:
        local = None
    if not local:
        raise InvalidInput(
            f"base model {body.base_model!r} cannot be fine-tuned: only transformers models in a local folder"
        )
    if base.manifest.base_source is not None:
        raise InvalidInput(
            f"base model {body.base_model!r} is a LoRA adapter; fine-tune the model it adapts instead"
        )
    if body.method == "lora" and not lora_targets_in(local, base.manifest.task):
        raise InvalidInput(
            f"base model {body.base_model!r} has no attention query/value layers for LoRA "
            f"(looked for {', '.join(LORA_TARGETS)}); use method 'full'"
        )
    if body.suffix is not None and not SUFFIX.fullmatch(body.suffix):
        raise InvalidInput("suffix must be 1-20 of a-z, 0-9 and '-', starting with a letter or digit")
    for file_id in (body.training_file, body.validation_file):
        if file_id is not None:
            _check_kind(store, tenant, file_id, body.base_model, base.manifest.task)
    spec = JobSpec(
        base_model=body.base_model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        hyperparameters=body.hyperparameters.model_dump(),
        method=body.method,
        suffix=body.suffix,
        priority=body.priority,
    )
    job = store.create_job(tenant, spec, idempotency_key, key_id=caller.key_id)
    gateway.runner.notify()  # runs here at once if this replica trains (else at another's next poll)
    return describe_job(job)


def _check_kind(store: FineTuneStore, tenant: str, file_id: str, base_model: str, task: str) -> None:
    """404 unless the tenant has the file; 422 unless it holds what the base model trains on."""
    kind = kind_of(store.get_file(tenant, file_id).summary)
    if kind != DATASET_KINDS[task]:
        raise InvalidInput(
            f"file {file_id!r} holds {DESCRIBED[kind]}, but base model {base_model!r} does "
            f"{task}, which fine-tunes on {DESCRIBED[DATASET_KINDS[task]]}"
        )


@router.get("", **s.documented(s.FineTuneJobList, *s.AUTHENTICATED))
def list_jobs(caller: FineTuner, store: Store) -> dict[str, Any]:
    return {"object": "list", "data": [describe_job(j) for j in store.list_jobs(tenant_of(caller))]}


@router.get("/{job_id}", **s.documented(s.FineTuneJob, *s.AUTHENTICATED, 404))
def get_job(job_id: str, caller: FineTuner, store: Store) -> dict[str, Any]:
    return describe_job(store.get_job(tenant_of(caller), job_id))


@router.get("/{job_id}/events", **s.documented(s.JobEventList, *s.AUTHENTICATED, 404))
def list_events(job_id: str, caller: FineTuner, store: Store) -> dict[str, Any]:
    events = store.events(tenant_of(caller), job_id)
    return {"object": "list", "data": [describe_event(e) for e in events]}


@router.post("/{job_id}/cancel", **s.documented(s.FineTuneJob, *s.AUTHENTICATED, 404, 409))
def cancel_job(job_id: str, caller: FineTuner, store: Store, gateway: App) -> dict[str, Any]:
    job = store.cancel(tenant_of(caller), job_id)
    gateway.runner.cancel(job_id)  # stops at its next step if this replica runs it
    return describe_job(job)
