"""`Client`: the synchronous client, one pooled `httpx.Client` per instance."""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from maas_client import _operations as ops
from maas_client._core import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Call,
    RetryPolicy,
    Sleep,
    call_steps,
    default_headers,
    resolve_api_key,
    resolve_base_url,
    to_timeout,
)
from maas_client._inputs import FileInput, ImageInput
from maas_client._operations import NOT_GIVEN, ProgressCallback, Time, _NotGiven
from maas_client.errors import MaasError
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


class Client:
    """A client of a maas-gateway.

    `base_url` defaults to MAAS_BASE_URL, then http://127.0.0.1:8000; `api_key` to MAAS_API_KEY
    (both read when the client is built). `timeout` is in seconds (or an `httpx.Timeout`).
    Failed calls are retried up to `max_retries` times (see `RetryPolicy`); `sleep` is how the
    client waits between tries (tests inject their own). Use it as a context manager, or call
    `close()`, to release its pooled connections.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._rng = random.random
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=to_timeout(timeout))
        self._http.headers.update(default_headers(self.api_key))
        self.models = Models(self)
        self.admin = Admin(self)
        self.usage = UsageResource(self)
        self.files = Files(self)
        self.fine_tunes = FineTunes(self)
        self.batches = Batches(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def me(self) -> KeyIdentity:
        """The key this client uses: its id, tenant, scopes and model list (`GET /v1/me`)."""
        return self._request(ops.get_me())

    def _request(self, call: Call[T]) -> T:
        steps = call_steps(call, self.retry_policy, self._rng)
        step = next(steps)
        while True:
            outcome: httpx.Response | httpx.TransportError | None = None
            if isinstance(step, Sleep):
                self._sleep(step.seconds)
            else:
                try:
                    outcome = self._http.send(self._http.build_request(**step.request_args))
                except httpx.TransportError as exc:
                    outcome = exc
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result

    def _run(self, program: Generator[Call[Any] | Sleep, Any, T]) -> T:
        try:
            step = next(program)
            while True:
                if isinstance(step, Sleep):
                    self._sleep(step.seconds)
                    step = program.send(None)
                else:
                    step = program.send(self._request(step))
        except StopIteration as done:
            result: T = done.value
            return result

    def predict(
        self,
        model: str,
        images: ImageInput | Sequence[ImageInput],
        *,
        top_k: int | None = 5,
        idempotency_key: str | None = None,
    ) -> Prediction:
        """Classify one image or several with `model`; one ranked label list per image, in order.

        An image is a path, bytes, a binary file object or a PIL image. One image is sent as
        raw bytes, several as multipart `file` parts; the content type comes from the bytes.
        Retries re-send one `Idempotency-Key` (generated, or `idempotency_key` when given, e.g. to
        keep it across restarts of the caller) so the gateway bills the call once.
        """
        return self._request(ops.predict(model, images, top_k, idempotency_key))

    def embed(
        self, model: str, texts: str | Sequence[str], *, idempotency_key: str | None = None
    ) -> Embeddings:
        """Embed one text or several with a text (feature-extraction) model; one vector per text
        (`idempotency_key` as in `predict`)."""
        return self._request(ops.embed(model, texts, idempotency_key))

    def classify_text(
        self,
        model: str,
        texts: str | Sequence[str],
        *,
        top_k: int | None = 5,
        idempotency_key: str | None = None,
    ) -> Prediction:
        """Classify one text or several with a text-classification model; one ranked label list
        per text, in order, at most `top_k` labels each (`idempotency_key` as in `predict`)."""
        return self._request(ops.classify_text(model, texts, top_k, idempotency_key))

    def extract_entities(
        self, model: str, texts: str | Sequence[str], *, idempotency_key: str | None = None
    ) -> Entities:
        """The named entities of one text or several, with a token-classification model; one
        list per text, in order (`idempotency_key` as in `predict`)."""
        return self._request(ops.extract_entities(model, texts, idempotency_key))

    def classify_zero_shot(
        self,
        model: str,
        images: ImageInput | Sequence[ImageInput],
        candidate_labels: Sequence[str],
        *,
        top_k: int | None = 5,
        idempotency_key: str | None = None,
    ) -> Prediction:
        """Classify one image or several with a zero-shot model (CLIP, SigLIP) among
        `candidate_labels` (the same for every image); one ranked label list per image, in order,
        at most `top_k` labels each (images as in `predict`, `idempotency_key` too)."""
        return self._request(ops.classify_zero_shot(model, images, candidate_labels, top_k, idempotency_key))

    def detect_objects(
        self,
        model: str,
        images: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
        idempotency_key: str | None = None,
    ) -> Detections:
        """The objects an object-detection model finds in one image or several: per image, the
        boxes scoring above `threshold` (0 to 1; the gateway's default 0.5 when None), best first,
        in the image's own pixels (images as in `predict`, `idempotency_key` too)."""
        return self._request(ops.detect_objects(model, images, threshold, idempotency_key))

    def segment(
        self,
        model: str,
        images: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
        idempotency_key: str | None = None,
    ) -> Segments:
        """The segments an image-segmentation model finds in one image or several: per image,
        `{label, score, mask}` with each mask (`Mask.decode()`) in the image's own size; instance
        and panoptic segments score above `threshold` (0 to 1; the gateway's default 0.9 when
        None), best first; semantic ones are every class present, score None (images as in
        `predict`, `idempotency_key` too)."""
        return self._request(ops.segment(model, images, threshold, idempotency_key))

    def embed_images(
        self,
        model: str,
        images: ImageInput | Sequence[ImageInput],
        *,
        idempotency_key: str | None = None,
    ) -> Embeddings:
        """Embed one image or several with an image-feature-extraction model; one vector per
        image, in order (images as in `predict`, `idempotency_key` too)."""
        return self._request(ops.embed_images(model, images, idempotency_key))

    def ready(self) -> bool:
        """True when the gateway answers /readyz with 200 (every preloaded model is settled)."""
        try:
            return self._request(ops.ready())
        except MaasError:
            return False


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Models(_Resource):
    """`client.models`: the models this key may use."""

    def list(self) -> builtins.list[Model]:
        """Every model the key may use (public ones and its tenant's fine-tuned ones), with status."""
        return self._client._request(ops.list_models())

    def get(self, name: str) -> Model:
        """One model; `NotFoundError` when unknown (or another tenant's)."""
        return self._client._request(ops.get_model(name))


class Tenants(_Resource):
    """`client.admin.tenants` (admin keys only)."""

    def create(
        self,
        name: str,
        *,
        rate_limit_rps: float | None = None,
        max_concurrency: int | None = None,
        monthly_quota_inputs: int | None = None,
        allowed_models: Sequence[str] | None = None,
        weight: float | None = None,
    ) -> Tenant:
        """Create a tenant with optional limits (None: unlimited) and model allow-list (None: all
        public models), and its `weight` (0.01-1000, default 1: its share of a busy model);
        `ConflictError` when the name is taken."""
        call = ops.create_tenant(
            name, rate_limit_rps, max_concurrency, monthly_quota_inputs, allowed_models, weight
        )
        return self._client._request(call)

    def list(self) -> builtins.list[Tenant]:
        """Every tenant."""
        return self._client._request(ops.list_tenants())

    def get(self, tenant: str) -> Tenant:
        """One tenant by name; `NotFoundError` when unknown."""
        return self._client._request(ops.get_tenant(tenant))

    def update(
        self,
        tenant: str,
        *,
        rate_limit_rps: float | _NotGiven | None = NOT_GIVEN,
        max_concurrency: int | _NotGiven | None = NOT_GIVEN,
        monthly_quota_inputs: int | _NotGiven | None = NOT_GIVEN,
        allowed_models: Sequence[str] | _NotGiven | None = NOT_GIVEN,
        weight: float | _NotGiven | None = NOT_GIVEN,
    ) -> Tenant:
        """Change a tenant's limits: only the arguments given change, None lifts a limit (or the
        allow-list; a weight goes back to 1). Takes effect on the tenant's next request."""
        changes: dict[str, Any] = {
            "rate_limit_rps": rate_limit_rps,
            "max_concurrency": max_concurrency,
            "monthly_quota_inputs": monthly_quota_inputs,
            "allowed_models": allowed_models,
            "weight": weight,
        }
        return self._client._request(ops.update_tenant(tenant, changes))

    def suspend(self, tenant: str) -> Tenant:
        """Suspend a tenant: its keys stop working (401) until it is resumed."""
        return self._client._request(ops.suspend_tenant(tenant))

    def resume(self, tenant: str) -> Tenant:
        """Resume a suspended tenant: its keys work again."""
        return self._client._request(ops.resume_tenant(tenant))


class Keys(_Resource):
    """`client.admin.keys` (admin keys only)."""

    def create(
        self,
        tenant: str,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        models: Sequence[str] | None = None,
        expires_at: str | datetime | None = None,
        rate_limit_rps: float | None = None,
    ) -> APIKey:
        """Create a key for `tenant`; the answer's `key` is the secret, shown this once. `scopes`
        default to inference and fine-tuning (`admin` makes an admin key); `models` narrows the
        tenant's models; `expires_at` must be in the future; `rate_limit_rps` caps this key."""
        call = ops.create_key(tenant, name, scopes, models, expires_at, rate_limit_rps)
        return self._client._request(call)

    def list(self, tenant: str) -> builtins.list[APIKey]:
        """The keys of `tenant`, revoked ones included (never their secrets)."""
        return self._client._request(ops.list_keys(tenant))

    def revoke(self, key_id: str) -> APIKey:
        """Revoke a key by its id (`key_…`, never the secret); it stops working on the next
        request. Returns the key with `revoked_at` set."""
        return self._client._request(ops.revoke_key(key_id))

    def rotate(self, key_id: str, *, grace_seconds: float | None = None) -> APIKey:
        """A new key with the old one's tenant, scopes and limits (its secret in `key`, the old key
        in `replaces`); the old key works `grace_seconds` more (default 0), then stops."""
        return self._client._request(ops.rotate_key(key_id, grace_seconds))


class AdminUsage(_Resource):
    """`client.admin.usage`: any tenant's usage (admin keys only)."""

    def get(
        self,
        *,
        tenant: str | None = None,
        start: Time | None = None,
        end: Time | None = None,
        group_by: str | Sequence[str] | None = None,
    ) -> UsageReport:
        """Usage of `tenant` (by name; every tenant when None) in [`start`, `end`), grouped by any of
        `tenant`, `model`, `day`, `key` (defaults as in `client.usage.get`)."""
        return self._client._request(ops.get_admin_usage(tenant, start, end, group_by))


class Billing(_Resource):
    """`client.admin.billing`: monthly invoice lines (admin keys only)."""

    def export(self, period: str) -> BillingExport:
        """The invoice lines of every tenant for `period` (`YYYY-MM`, UTC), with the total."""
        return self._client._request(ops.billing_export(period))

    def export_csv(self, period: str) -> str:
        """The same export as CSV text, one line per tenant, model and unit price."""
        return self._client._request(ops.billing_export_csv(period))


class AdminModels(_Resource):
    """`client.admin.models`: models registered at run time (admin keys only)."""

    def register(self, manifest: Mapping[str, Any]) -> Model:
        """Register a model from a manifest (the fields of a manifest file) and start loading it:
        answers it `loading` (then `ready`, or `unavailable` with the reason: see `models.get`);
        `InvalidInputError` naming the field for a bad manifest, `ConflictError` for a taken name."""
        return self._client._request(ops.register_model(manifest))

    def update(
        self,
        name: str,
        *,
        replicas: int | _NotGiven = NOT_GIVEN,
        batching: Mapping[str, Any] | _NotGiven = NOT_GIVEN,
        price: Mapping[str, Any] | _NotGiven = NOT_GIVEN,
        preload: bool | _NotGiven = NOT_GIVEN,
        pinned: bool | _NotGiven = NOT_GIVEN,
        description: str | _NotGiven = NOT_GIVEN,
    ) -> Model:
        """Change a registered model: only the arguments given change; replicas and batching
        reload it, a price and pinning hold at once."""
        call = ops.update_model(
            name,
            replicas=replicas,
            batching=batching,
            price=price,
            preload=preload,
            pinned=pinned,
            description=description,
        )
        return self._client._request(call)

    def delete(self, name: str) -> Model:
        """Drain a registered model (queued inputs are answered), then remove it (status `deleted`)."""
        return self._client._request(ops.delete_model(name))

    def load(self, name: str) -> Model:
        """Load a registered model again (after `unload`, or to retry an unavailable one)."""
        return self._client._request(ops.load_model(name, True))

    def unload(self, name: str) -> Model:
        """Drain a registered model and free its devices: `unloaded` until its next use loads it."""
        return self._client._request(ops.load_model(name, False))


class Admin:
    """`client.admin`: tenants, keys, registered models, usage and billing (admin keys only: others get
    `PermissionDeniedError`)."""

    def __init__(self, client: Client) -> None:
        self.tenants = Tenants(client)
        self.models = AdminModels(client)
        self.keys = Keys(client)
        self.usage = AdminUsage(client)
        self.billing = Billing(client)


class UsageResource(_Resource):
    """`client.usage`: the caller's tenant usage and cost."""

    def get(
        self,
        *,
        start: Time | None = None,
        end: Time | None = None,
        group_by: str | Sequence[str] | None = None,
    ) -> UsageReport:
        """Requests, billed inputs, compute and cost of the key's tenant in [`start`, `end`)
        (default: from the start of this month, UTC, until now), one row per group of `group_by`
        (any of `model`, `day`, `key`, e.g. `["model", "day"]`; None: one row in all)."""
        return self._client._request(ops.get_usage(start, end, group_by))


class Files(_Resource):
    """`client.files`: datasets for fine-tuning (keys with the `fine_tune` scope)."""

    def upload(self, file: FileInput, *, purpose: str = "fine-tune") -> FileObject:
        """Upload a dataset from a path, bytes or binary file: a zip in image-folder layout
        (`<label>/<image>`, or with `train/` and `validation/` at the top) for image classifiers,
        or JSONL (`{"text": …, "label": …}` a line) or CSV (a `text,label` header) for text
        classifiers. The gateway checks it whole first (`InvalidInputError` naming the first
        problem, and the line for text); `summary` describes it, `examples` counts it."""
        return self._client._request(ops.upload_file(file, purpose))

    def list(self) -> builtins.list[FileObject]:
        """The tenant's uploaded files."""
        return self._client._request(ops.list_files())

    def get(self, file_id: str) -> FileObject:
        """One uploaded file; `NotFoundError` when unknown (or another tenant's)."""
        return self._client._request(ops.get_file(file_id))

    def delete(self, file_id: str) -> None:
        """Delete an uploaded file; `NotFoundError` when unknown."""
        self._client._request(ops.delete_file(file_id))


class FineTunes(_Resource):
    """`client.fine_tunes`: fine-tuning jobs (keys with the `fine_tune` scope)."""

    def create(
        self,
        base_model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        suffix: str | None = None,
        method: str | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
    ) -> FineTuneJob:
        """Queue a job fine-tuning `base_model` on an uploaded file (`file_…`); `hyperparameters`
        may set `epochs`, `learning_rate`, `batch_size`, `seed`, and for `method="lora"`
        `lora_rank` and `lora_alpha`; `suffix` goes into the new model's name; `method` is `full`
        (the gateway's default) or `lora` (a small adapter over the shared base); `priority` is
        `high`, `normal` (default) or `low`: the queue is first-in first-out per priority.
        Retries re-send one `Idempotency-Key`, so a retried create never queues a second job."""
        call = ops.create_fine_tune(
            base_model,
            training_file,
            validation_file,
            hyperparameters,
            suffix,
            method,
            priority,
            idempotency_key,
        )
        return self._client._request(call)

    def get(self, job_id: str) -> FineTuneJob:
        """One job, with its status, progress, metrics and, once it succeeded, `fine_tuned_model`."""
        return self._client._request(ops.get_fine_tune(job_id))

    def list(self) -> builtins.list[FineTuneJob]:
        """The tenant's jobs."""
        return self._client._request(ops.list_fine_tunes())

    def events(self, job_id: str) -> builtins.list[FineTuneEvent]:
        """A job's events, oldest first: status changes, per-epoch metrics, errors."""
        return self._client._request(ops.fine_tune_events(job_id))

    def cancel(self, job_id: str) -> FineTuneJob:
        """Cancel a queued job (at once) or a running one (at its next step; `get` shows when);
        `ConflictError` when the job has already finished."""
        return self._client._request(ops.cancel_fine_tune(job_id))

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 5.0,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> FineTuneJob:
        """Poll until the job succeeds, fails or is cancelled, and return it (check its `status`:
        a failed job is returned, not raised). `progress(job, new_events)` is called after every
        poll with the events not reported yet; `TimeoutError` after `timeout` seconds."""
        return self._client._run(ops.wait_fine_tune(job_id, poll_interval, timeout, progress))


class Batches(_Resource):
    """`client.batches`: asynchronous batch jobs (keys with the `inference` scope), run on the
    capacity interactive requests leave, at the model's batch price."""

    def create(self, model: str, input_file: str) -> Batch:
        """Queue the inputs of a file uploaded with `files.upload(..., purpose="batch")` (a zip of
        images, or JSON lines `{"inputs": "..."}`) for `model`."""
        return self._client._request(ops.create_batch(model, input_file))

    def get(self, batch_id: str) -> Batch:
        """One job, with its status and counts; `NotFoundError` when unknown (or another tenant's)."""
        return self._client._request(ops.get_batch(batch_id))

    def list(self) -> builtins.list[Batch]:
        """The tenant's jobs, newest first."""
        return self._client._request(ops.list_batches())

    def cancel(self, batch_id: str) -> Batch:
        """Cancel a queued job (at once) or a running one (after the inputs in flight); what it
        processed is billed. `ConflictError` when the job has already finished."""
        return self._client._request(ops.cancel_batch(batch_id))

    def results(self, batch_id: str) -> builtins.list[dict[str, Any]]:
        """The results so far, one dict per input in input order: `index`, `input` (a zip's entry
        name), and the model's output (`predictions`, ...) or an `error`."""
        return self._client._request(ops.batch_results(batch_id))

    def wait(self, batch_id: str, *, poll_interval: float = 2.0, timeout: float | None = None) -> Batch:
        """Poll until the job completes, fails or is cancelled, and return it; `TimeoutError`
        after `timeout` seconds."""
        return self._client._run(ops.wait_batch(batch_id, poll_interval, timeout))
