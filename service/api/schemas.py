"""The gateway's answers as pydantic models, for the OpenAPI schema (/openapi.json) and the SDK's
schema test (client/tests/test_schema.py). Routes still build their answers as dicts (the wire
format is theirs, field order included); `documented(...)` declares a route's answer and the error
statuses it really returns, in the one error shape of service/errors.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# What each error status means on the gateway's own routes.
ERROR_MEANINGS = {
    400: "Malformed request (a NUL byte in a parameter, a malformed body).",
    401: "Missing or unknown API key.",
    403: "The key lacks the scope, or its tenant is suspended.",
    404: "No such resource (or another tenant's).",
    409: "Conflict: the name is taken, or the resource is in the wrong state.",
    413: "Body or upload over the limits.",
    415: "Unsupported media type.",
    422: "A field or parameter is invalid (the message says which).",
    429: "Rate limit, quota or in-flight cap; see Retry-After.",
    503: "Unavailable; see Retry-After.",
    504: "The request's deadline passed before it ran.",
}
AUTHENTICATED = (400, 401, 403, 422)  # any route behind a key: the guard, the key, its scope, parameters


class ErrorDetail(BaseModel):
    type: str = Field(description="The error's kind, e.g. not_found, invalid_input, rate_limited.")
    message: str
    request_id: str | None = Field(description="The X-Request-Id of the request, for the logs.")


class Error(BaseModel):
    """The gateway's error shape, on every route but /v1/embeddings and /v2."""

    error: ErrorDetail


def documented(
    answer: type[BaseModel] | None, *errors: int, status: int = 200, description: str = "Success."
) -> dict[str, Any]:
    """The route's keyword arguments that declare its answer (`answer` at `status`) and its error
    answers. `response_model=None`: the route's dict goes out as built, never re-serialized."""
    responses: dict[int | str, dict[str, Any]] = {
        s: {"model": Error, "description": ERROR_MEANINGS[s]} for s in sorted(set(errors))
    }
    if answer is not None:
        responses[status] = {"model": answer, "description": description}
    return {"response_model": None, "responses": responses}


class ListOf(BaseModel):
    object: Literal["list"]


# health


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "draining"]
    models: dict[str, str] = Field(description="Each public model's status.")


# models


class CompileInfo(BaseModel):
    active: bool = Field(description="Compiled; false: running eagerly (see reason).")
    batch_sizes: list[int] = Field(description="The batch sizes compiled; a batch is padded up to one.")
    reason: str | None = Field(description="Why the model runs eagerly although the manifest asks.")
    seconds: float | None = Field(description="How long compiling every batch size took.")


class CpuLinearInfo(BaseModel):
    kernels: Literal["onednn", "default"] = Field(
        description="oneDNN with weights packed at load, or torch's default (MKL on x86)."
    )
    packed_layers: int = Field(description="How many Linear layers are packed for oneDNN.")
    reason: str = Field(description="Why (MAAS_CPU_LINEAR and this CPU).")


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"]
    created: int = Field(description="Unix time (OpenAI's `Model.created`).")
    task: str | None
    adapter: str | None
    status: str = Field(
        description="ready, loading, not_loaded (loads on its first request), unloaded (by an admin or "
        "evicted for memory: loads again on its next request), unavailable (see reason); deleted in "
        "the answer to its deletion."
    )
    reason: str | None
    dtype: str | None
    devices: list[str]
    replicas: int
    batching: dict[str, Any] | None
    preload: bool
    pinned: bool = Field(description="Kept resident: never evicted to make room for another model.")
    description: str
    labels: int | None
    load_seconds: float | None
    compile: CompileInfo | None = Field(description="Manifest `compile: true`: what it became.")
    cpu_linear: CpuLinearInfo | None = Field(
        None, description="A loaded float32 model on a CPU, not compiled: what runs its Linear layers."
    )
    owned_by: Literal["system", "tenant"]


class ModelList(ListOf):
    data: list[ModelInfo]


# inference


class Label(BaseModel):
    label: str
    score: float


class Entity(BaseModel):
    entity_group: str
    score: float
    word: str
    start: int
    end: int


class Box(BaseModel):
    """In the pixels of the image as sent."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int


class Detection(BaseModel):
    label: str
    score: float
    box: Box


class Mask(BaseModel):
    """COCO's uncompressed run-length encoding, in the size of the image as sent: the pixels read
    column by column, `counts` the lengths of alternating runs starting with unset pixels."""

    size: list[int] = Field(description="[height, width]", min_length=2, max_length=2)
    counts: list[int]


class Segment(BaseModel):
    label: str
    score: float | None = Field(description="None for semantic segmentation (every class present).")
    mask: Mask


class Usage(BaseModel):
    inputs: int
    compute_ms: float | None = Field(None, description="Metered keys (a tenant's) only.")
    cost_micro: int | None = None
    cost: str | None = Field(None, description="A decimal, e.g. '0.002000'.")


class PredictInputs(BaseModel):
    """A predict body in JSON: base64 images (image models) or texts (text models)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(description="One input each: base64 of an image, or a text.")
    candidate_labels: list[str] | None = Field(
        None, description="Zero-shot image classification: the labels to score each image against."
    )


class Prediction(BaseModel):
    """One result per input, in input order, under the key of the model's task."""

    id: str
    object: Literal["prediction"]
    model: str
    predictions: list[list[Label]] | None = Field(None, description="Classifiers: best labels first.")
    entities: list[list[Entity]] | None = Field(None, description="Token classification.")
    embeddings: list[list[float]] | None = Field(None, description="Feature extraction.")
    detections: list[list[Detection]] | None = Field(None, description="Object detection: best first.")
    segments: list[list[Segment]] | None = Field(None, description="Image segmentation.")
    usage: Usage


# keys and tenants


class KeyIdentity(BaseModel):
    """`GET /v1/me`: the caller's own key, as the gateway sees it."""

    object: Literal["key_identity"]
    key_id: str
    tenant: str = Field(description="The key's tenant's name.")
    scopes: list[str] = Field(description="Among inference, fine_tune, admin (admin allows all).")
    models: list[str] | None = Field(description="The models it may use; null: every model it can see.")
    admin: bool


class Tenant(BaseModel):
    object: Literal["tenant"]
    id: str
    name: str
    status: Literal["active", "suspended"]
    allowed_models: list[str] | None
    rate_limit_rps: float | None
    max_concurrency: int | None
    monthly_quota_inputs: int | None
    weight: float = Field(description="Its share of a busy model's batches (fair queueing).")
    created_at: str


class TenantList(ListOf):
    data: list[Tenant]


class ApiKey(BaseModel):
    """A key as lists show it: never its secret, never its hash."""

    object: Literal["api_key"]
    id: str
    tenant: str
    name: str | None
    prefix: str
    scopes: list[str]
    models: list[str] | None
    rate_limit_rps: float | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    created_at: str | None


class ApiKeyList(ListOf):
    data: list[ApiKey]


class NewApiKey(ApiKey):
    key: str = Field(description="The key itself, shown this once.")


class RotatedApiKey(NewApiKey):
    replaces: ApiKey


# usage and billing


class UsageRow(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "Only the grouped-by fields are present."})

    tenant: str | None = None
    tenant_name: str | None = None
    model: str | None = None
    day: str | None = None
    key: str | None = None
    kind: str
    requests: int
    errors: int
    inputs: int
    compute_seconds: str = Field(description="A decimal, e.g. '1.250000'.")
    cost_micro: int
    cost: str


class UsageReport(BaseModel):
    object: Literal["usage"]
    start: str
    end: str
    group_by: list[str]
    data: list[UsageRow]
    total_cost_micro: int
    total_cost: str


class InvoiceLine(BaseModel):
    tenant: str
    tenant_id: str
    model: str
    kind: str
    inputs: int
    requests: int
    compute_seconds: str = Field(description="A decimal, e.g. '1.250000'.")
    unit_price: str
    unit_price_micro: int
    compute_second_price_micro: int
    amount: str
    amount_micro: int


class BillingExport(BaseModel):
    object: Literal["billing_export"]
    period: str
    currency_unit_micro: int
    lines: list[InvoiceLine]
    total_micro: int
    total: str


# fine-tuning


class DatasetFile(BaseModel):
    id: str
    object: Literal["file"]
    filename: str
    bytes: int
    purpose: str
    status: str
    summary: dict[str, Any] | None
    created_at: str | None


class FileList(ListOf):
    data: list[DatasetFile]


class DeletedFile(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


class JobProgress(BaseModel):
    steps_done: int
    steps_total: int | None
    epochs_done: int
    epochs_total: int | None


class JobUsage(BaseModel):
    device_seconds: float
    trained_samples: int


class FineTuneJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"]
    base_model: str
    method: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    suffix: str | None
    priority: str
    status: str
    progress: JobProgress
    metrics: dict[str, Any] | None
    fine_tuned_model: str | None
    error: str | None
    usage: JobUsage
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class FineTuneJobList(ListOf):
    data: list[FineTuneJob]


class JobEvent(BaseModel):
    id: int
    object: Literal["fine_tuning.job.event"]
    level: str
    type: str
    message: str
    data: dict[str, Any] | None
    created_at: str | None


class JobEventList(ListOf):
    data: list[JobEvent]


# batches


class BatchCounts(BaseModel):
    total: int = Field(description="Inputs in the input file.")
    completed: int = Field(description="Inputs answered so far (billed).")
    failed: int = Field(description="Inputs whose results line holds an error (not billed).")


class Batch(BaseModel):
    id: str
    object: Literal["batch"]
    model: str
    input_file: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    counts: BatchCounts
    error: str | None = Field(description="Why a failed job failed as a whole.")
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class BatchList(ListOf):
    data: list[Batch]
