"""Every API call of the gateway as a `Call`: path, body and answer parser, written once for
both clients. The paths and bodies follow the gateway's HTTP API (docs/api.md in its repository)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import date, datetime
from enum import Enum
from typing import Any, Final, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from maas_client._core import IDEMPOTENCY_HEADER, Call, Sleep
from maas_client._inputs import FileInput, ImageInput, image_uploads, read_file_input
from maas_client._parse import parse
from maas_client.types import (
    APIKey,
    Batch,
    BillingExport,
    Detections,
    Embeddings,
    Entities,
    FileObject,
    FineTuneEvent,
    FineTuneJob,
    KeyIdentity,
    Model,
    Prediction,
    Segments,
    Tenant,
    UsageReport,
)

T = TypeVar("T")
ProgressCallback = Callable[[FineTuneJob, list[FineTuneEvent]], None]
"""`progress(job, new_events)`: called by `fine_tunes.wait` after every poll."""

Time: TypeAlias = str | date | datetime
"""A point in time for usage reports: an ISO 8601 string, a date (its midnight, UTC) or a
datetime (one without a zone is UTC)."""


class _NotGiven(Enum):
    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = _NotGiven.NOT_GIVEN
"""Default of `tenants.update` arguments: leave that setting as it is (None clears a limit)."""


def _seg(value: str) -> str:
    """One path segment, escaped."""
    return quote(str(value), safe="")


def _json(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object from {response.request.url}, got {type(body).__name__}")
    return body


def _one(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(cls, _json(response))


def _many(cls: type[T]) -> Callable[[httpx.Response], list[T]]:
    def parse_list(response: httpx.Response) -> list[T]:
        body = response.json()
        items = body.get("data") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise ValueError(f"expected a list from {response.request.url}")
        return [parse(cls, item) for item in items]

    return parse_list


def _none(response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


def _time(value: Time | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def _compact(**fields: Any) -> dict[str, Any]:
    """A JSON body without the optional fields the caller left out."""
    return {k: v for k, v in fields.items() if v is not None}


# Inference and models


def _idempotency(key: str | None) -> dict[str, str]:
    return {} if key is None else {IDEMPOTENCY_HEADER: key}


def predict(
    model: str, images: ImageInput | Sequence[ImageInput], top_k: int | None, idempotency_key: str | None
) -> Call[Prediction]:
    params = {} if top_k is None else {"top_k": top_k}
    return _images(model, images, params, _one(Prediction), idempotency_key)


def embed_images(
    model: str, images: ImageInput | Sequence[ImageInput], idempotency_key: str | None
) -> Call[Embeddings]:
    return _images(model, images, {}, _one(Embeddings), idempotency_key)


def classify_zero_shot(
    model: str,
    images: ImageInput | Sequence[ImageInput],
    candidate_labels: Sequence[str],
    top_k: int | None,
    idempotency_key: str | None,
) -> Call[Prediction]:
    if isinstance(candidate_labels, str):
        raise TypeError("candidate_labels is a list of labels, not one string")
    params = {} if top_k is None else {"top_k": top_k}
    fields: dict[str, str | list[str]] = {"candidate_labels": list(candidate_labels)}
    return _images(model, images, params, _one(Prediction), idempotency_key, fields)


def detect_objects(
    model: str,
    images: ImageInput | Sequence[ImageInput],
    threshold: float | None,
    idempotency_key: str | None,
) -> Call[Detections]:
    params = {} if threshold is None else {"threshold": threshold}
    return _images(model, images, params, _one(Detections), idempotency_key)


def segment(
    model: str,
    images: ImageInput | Sequence[ImageInput],
    threshold: float | None,
    idempotency_key: str | None,
) -> Call[Segments]:
    params = {} if threshold is None else {"threshold": threshold}
    return _images(model, images, params, _one(Segments), idempotency_key)


def _images(
    model: str,
    images: ImageInput | Sequence[ImageInput],
    params: dict[str, Any],
    parse: Callable[[httpx.Response], T],
    idempotency_key: str | None,
    fields: dict[str, str | list[str]] | None = None,
) -> Call[T]:
    """The predict call for images: one as raw bytes, several (or any with form `fields`) as
    multipart `file` parts."""
    uploads = image_uploads(images)
    path = f"/v1/models/{_seg(model)}/predict"
    if len(uploads) == 1 and fields is None:
        (one,) = uploads
        headers = {"Content-Type": one.content_type, **_idempotency(idempotency_key)}
        return Call("POST", path, parse, params=params, content=one.data, headers=headers, replay_safe=True)
    files = [("file", (u.filename, u.data, u.content_type)) for u in uploads]
    headers = _idempotency(idempotency_key)
    return Call(
        "POST", path, parse, params=params, files=files, data=fields, headers=headers, replay_safe=True
    )


def embed(model: str, texts: str | Sequence[str], idempotency_key: str | None) -> Call[Embeddings]:
    return _texts(model, texts, {}, _one(Embeddings), idempotency_key)


def classify_text(
    model: str, texts: str | Sequence[str], top_k: int | None, idempotency_key: str | None
) -> Call[Prediction]:
    params = {} if top_k is None else {"top_k": top_k}
    return _texts(model, texts, params, _one(Prediction), idempotency_key)


def extract_entities(model: str, texts: str | Sequence[str], idempotency_key: str | None) -> Call[Entities]:
    return _texts(model, texts, {}, _one(Entities), idempotency_key)


def _texts(
    model: str,
    texts: str | Sequence[str],
    params: dict[str, Any],
    parse: Callable[[httpx.Response], T],
    idempotency_key: str | None,
) -> Call[T]:
    """The predict call for texts: JSON `{"inputs": [...]}`."""
    inputs = [texts] if isinstance(texts, str) else list(texts)
    if not inputs:
        raise ValueError("no texts given")
    path = f"/v1/models/{_seg(model)}/predict"
    headers = _idempotency(idempotency_key)
    return Call(
        "POST", path, parse, params=params, json={"inputs": inputs}, headers=headers, replay_safe=True
    )


def list_models() -> Call[list[Model]]:
    return Call("GET", "/v1/models", _many(Model))


def get_model(name: str) -> Call[Model]:
    return Call("GET", f"/v1/models/{_seg(name)}", _one(Model))


def ready() -> Call[bool]:
    return Call("GET", "/readyz", lambda response: response.status_code == 200, retry=False)


# Admin: models registered at run time


def register_model(manifest: Mapping[str, Any]) -> Call[Model]:
    return Call("POST", "/v1/admin/models", _one(Model), json=dict(manifest))


def update_model(
    name: str,
    *,
    replicas: int | _NotGiven,
    batching: Mapping[str, Any] | _NotGiven,
    price: Mapping[str, Any] | _NotGiven,
    preload: bool | _NotGiven,
    pinned: bool | _NotGiven,
    description: str | _NotGiven,
) -> Call[Model]:
    """PATCH with only the fields given (NOT_GIVEN ones left out)."""
    changes: dict[str, Any] = {
        "replicas": replicas,
        "batching": batching if isinstance(batching, _NotGiven) else dict(batching),
        "price": price if isinstance(price, _NotGiven) else dict(price),
        "preload": preload,
        "pinned": pinned,
        "description": description,
    }
    body = {k: v for k, v in changes.items() if v is not NOT_GIVEN}
    return Call("PATCH", f"/v1/admin/models/{_seg(name)}", _one(Model), json=body)


def delete_model(name: str) -> Call[Model]:
    return Call("DELETE", f"/v1/admin/models/{_seg(name)}", _one(Model))


def load_model(name: str, load: bool) -> Call[Model]:
    action = "load" if load else "unload"
    return Call("POST", f"/v1/admin/models/{_seg(name)}/{action}", _one(Model), replay_safe=True)


# Admin: tenants and keys


def create_tenant(
    name: str,
    rate_limit_rps: float | None,
    max_concurrency: int | None,
    monthly_quota_inputs: int | None,
    allowed_models: Sequence[str] | None,
    weight: float | None = None,
) -> Call[Tenant]:
    body = _compact(
        name=name,
        rate_limit_rps=rate_limit_rps,
        max_concurrency=max_concurrency,
        monthly_quota_inputs=monthly_quota_inputs,
        allowed_models=None if allowed_models is None else list(allowed_models),
        weight=weight,
    )
    return Call("POST", "/v1/admin/tenants", _one(Tenant), json=body)


def list_tenants() -> Call[list[Tenant]]:
    return Call("GET", "/v1/admin/tenants", _many(Tenant))


def get_tenant(tenant: str) -> Call[Tenant]:
    return Call("GET", f"/v1/admin/tenants/{_seg(tenant)}", _one(Tenant))


def update_tenant(tenant: str, changes: dict[str, Any]) -> Call[Tenant]:
    """PATCH with only the settings given (NOT_GIVEN ones left out; None clears a limit)."""
    body = {
        k: (list(v) if isinstance(v, list | tuple) else v) for k, v in changes.items() if v is not NOT_GIVEN
    }
    return Call("PATCH", f"/v1/admin/tenants/{_seg(tenant)}", _one(Tenant), json=body)


def suspend_tenant(tenant: str) -> Call[Tenant]:
    return Call("POST", f"/v1/admin/tenants/{_seg(tenant)}/suspend", _one(Tenant), replay_safe=True)


def resume_tenant(tenant: str) -> Call[Tenant]:
    return Call("POST", f"/v1/admin/tenants/{_seg(tenant)}/resume", _one(Tenant), replay_safe=True)


def create_key(
    tenant: str,
    name: str | None,
    scopes: Sequence[str] | None,
    models: Sequence[str] | None,
    expires_at: str | datetime | None,
    rate_limit_rps: float | None,
) -> Call[APIKey]:
    body = _compact(
        name=name,
        scopes=None if scopes is None else list(scopes),
        models=None if models is None else list(models),
        expires_at=_time(expires_at),
        rate_limit_rps=rate_limit_rps,
    )
    return Call("POST", f"/v1/admin/tenants/{_seg(tenant)}/keys", _one(APIKey), json=body)


def list_keys(tenant: str) -> Call[list[APIKey]]:
    return Call("GET", f"/v1/admin/tenants/{_seg(tenant)}/keys", _many(APIKey))


def revoke_key(key_id: str) -> Call[APIKey]:
    return Call("DELETE", f"/v1/admin/keys/{_seg(key_id)}", _one(APIKey))


def rotate_key(key_id: str, grace_seconds: float | None) -> Call[APIKey]:
    body = _compact(grace_seconds=grace_seconds)
    return Call("POST", f"/v1/admin/keys/{_seg(key_id)}/rotate", _one(APIKey), json=body)


def get_me() -> Call[KeyIdentity]:
    return Call("GET", "/v1/me", _one(KeyIdentity))


# Usage and billing


def _usage_params(
    start: Time | None, end: Time | None, group_by: str | Sequence[str] | None, tenant: str | None = None
) -> dict[str, str]:
    group = group_by if group_by is None or isinstance(group_by, str) else ",".join(group_by)
    return _compact(tenant=tenant, start=_time(start), end=_time(end), group_by=group)


def get_usage(
    start: Time | None, end: Time | None, group_by: str | Sequence[str] | None
) -> Call[UsageReport]:
    params = _usage_params(start, end, group_by)
    return Call("GET", "/v1/usage", _one(UsageReport), params=params)


def get_admin_usage(
    tenant: str | None, start: Time | None, end: Time | None, group_by: str | Sequence[str] | None
) -> Call[UsageReport]:
    params = _usage_params(start, end, group_by, tenant)
    return Call("GET", "/v1/admin/usage", _one(UsageReport), params=params)


def billing_export(period: str) -> Call[BillingExport]:
    params = {"period": period, "format": "json"}
    return Call("GET", "/v1/admin/billing/export", _one(BillingExport), params=params)


def billing_export_csv(period: str) -> Call[str]:
    params: dict[str, str] = {"period": period, "format": "csv"}
    return Call("GET", "/v1/admin/billing/export", _text, params=params)


# Files


def upload_file(file: FileInput, purpose: str) -> Call[FileObject]:
    name, data = read_file_input(file)
    files = [("file", (name, data, "application/zip" if data[:2] == b"PK" else "application/octet-stream"))]
    return Call("POST", "/v1/files", _one(FileObject), files=files, data={"purpose": purpose})


def list_files() -> Call[list[FileObject]]:
    return Call("GET", "/v1/files", _many(FileObject))


def get_file(file_id: str) -> Call[FileObject]:
    return Call("GET", f"/v1/files/{_seg(file_id)}", _one(FileObject))


def delete_file(file_id: str) -> Call[None]:  # answers {"id", "deleted": true}: nothing to return
    return Call("DELETE", f"/v1/files/{_seg(file_id)}", _none)


# Fine-tunes


def create_fine_tune(
    base_model: str,
    training_file: str,
    validation_file: str | None,
    hyperparameters: dict[str, Any] | None,
    suffix: str | None,
    method: str | None,
    priority: str | None,
    idempotency_key: str | None,
) -> Call[FineTuneJob]:
    body = _compact(
        base_model=base_model,
        training_file=training_file,
        validation_file=validation_file,
        hyperparameters=hyperparameters,
        suffix=suffix,
        method=method,
        priority=priority,
    )
    # The gateway answers a repeated Idempotency-Key with the first job: safe to send again.
    parse, headers = _one(FineTuneJob), _idempotency(idempotency_key)
    return Call("POST", "/v1/fine-tunes", parse, json=body, headers=headers, replay_safe=True)


def get_fine_tune(job_id: str) -> Call[FineTuneJob]:
    return Call("GET", f"/v1/fine-tunes/{_seg(job_id)}", _one(FineTuneJob))


def list_fine_tunes() -> Call[list[FineTuneJob]]:
    return Call("GET", "/v1/fine-tunes", _many(FineTuneJob))


def fine_tune_events(job_id: str) -> Call[list[FineTuneEvent]]:
    return Call("GET", f"/v1/fine-tunes/{_seg(job_id)}/events", _many(FineTuneEvent))


def cancel_fine_tune(job_id: str) -> Call[FineTuneJob]:
    return Call("POST", f"/v1/fine-tunes/{_seg(job_id)}/cancel", _one(FineTuneJob))


def wait_fine_tune(
    job_id: str,
    poll_interval: float,
    timeout: float | None,
    progress: ProgressCallback | None,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[Call[Any] | Sleep, Any, FineTuneJob]:
    """Poll a job (and its events, when someone listens) until it is done; yields calls to make
    and sleeps, gets back each call's result. Raises TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else clock() + timeout
    seen = 0
    while True:
        job: FineTuneJob = yield get_fine_tune(job_id)
        if progress is not None:
            events: list[FineTuneEvent] = yield fine_tune_events(job_id)
            # Events come oldest first and only grow; report the ones not reported yet.
            progress(job, events[seen:])
            seen = max(seen, len(events))
        if job.done:
            return job
        if deadline is not None and clock() >= deadline:
            raise TimeoutError(f"fine-tune {job_id} still {job.status} after {timeout} s")
        yield Sleep(poll_interval)


# Batches


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def create_batch(model: str, input_file: str) -> Call[Batch]:
    body = {"model": model, "input_file": input_file}
    return Call("POST", "/v1/batches", _one(Batch), json=body)


def get_batch(batch_id: str) -> Call[Batch]:
    return Call("GET", f"/v1/batches/{_seg(batch_id)}", _one(Batch))


def list_batches() -> Call[list[Batch]]:
    return Call("GET", "/v1/batches", _many(Batch))


def cancel_batch(batch_id: str) -> Call[Batch]:
    return Call("POST", f"/v1/batches/{_seg(batch_id)}/cancel", _one(Batch))


def batch_results(batch_id: str) -> Call[list[dict[str, Any]]]:
    return Call("GET", f"/v1/batches/{_seg(batch_id)}/results", _lines)


def wait_batch(
    batch_id: str, poll_interval: float, timeout: float | None, clock: Callable[[], float] = time.monotonic
) -> Generator[Call[Any] | Sleep, Any, Batch]:
    """Poll a batch job until it is done; raises TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        job: Batch = yield get_batch(batch_id)
        if job.done:
            return job
        if deadline is not None and clock() >= deadline:
            raise TimeoutError(f"batch {batch_id} still {job.status} after {timeout} s")
        yield Sleep(poll_interval)
