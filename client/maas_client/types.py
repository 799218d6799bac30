"""Typed results. Each is a frozen dataclass built from the gateway's JSON by its type hints
(`_parse.parse`, one path for every type) and checked against the gateway's OpenAPI schema by a
test (client/tests/test_schema.py); `raw` keeps the whole answer, so fields the gateway adds later
are reachable before this client names them. Fields the gateway leaves out read as None (or
empty), and fields it adds are ignored: an older client keeps working against a newer gateway.
Statuses stay plain strings for the same reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = [
    "APIKey",
    "BillingExport",
    "Embeddings",
    "FileObject",
    "FineTuneEvent",
    "FineTuneJob",
    "FineTuneProgress",
    "FineTuneUsage",
    "InvoiceLine",
    "Label",
    "Model",
    "Prediction",
    "Tenant",
    "Usage",
    "UsageReport",
    "UsageRow",
]

JSON = dict[str, Any]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
BATCH_TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class Label:
    """One class and its score."""

    label: str
    score: float


@dataclass(frozen=True)
class Usage:
    """What a request consumed: billed `inputs`, and for a tenant's key the device time
    (`compute_ms`) and the price (`cost_micro` in millionths of the currency unit, `cost` exact)."""

    inputs: int
    compute_ms: float | None = None
    cost_micro: int | None = None
    cost: Decimal | None = None


@dataclass(frozen=True)
class Prediction:
    """The answer to `predict`: one ranked list of labels per input, in input order
    (`predictions`), or one vector per input for embedding models (`embeddings`)."""

    id: str
    model: str
    predictions: list[list[Label]]
    usage: Usage
    embeddings: list[list[float]] | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def top(self) -> list[Label]:
        """The best label of each input (inputs with no label are skipped)."""
        return [ranked[0] for ranked in self.predictions if ranked]


@dataclass(frozen=True)
class Embeddings:
    """The answer to `embed` and `embed_images`: one vector per input, in input order."""

    id: str
    model: str
    embeddings: list[list[float]]
    usage: Usage
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Entity:
    """One entity a token-classification model found: its group (e.g. `PER`), score, the words
    and where they are in the text (`text[start:end]`, in characters)."""

    entity_group: str
    score: float
    word: str
    start: int
    end: int


@dataclass(frozen=True)
class Box:
    """Where an object is, in the pixels of the image as sent (corners, inclusive of xmin/ymin)."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass(frozen=True)
class Detection:
    """One object an object-detection model found: its label, score and box."""

    label: str
    score: float
    box: Box


@dataclass(frozen=True)
class Detections:
    """The answer to `detect_objects`: the objects found in each image, best first, in input order."""

    id: str
    model: str
    detections: list[list[Detection]]
    usage: Usage
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Mask:
    """A segment's mask as COCO's uncompressed run-length encoding, in the size of the image as
    sent: `size` is [height, width]; `counts` are the lengths of alternating runs of unset and set
    pixels, read column by column, starting with unset ones."""

    size: list[int]
    counts: list[int]

    def decode(self) -> list[list[int]]:
        """The mask as `height` rows of `width` values, 1 where the segment is and 0 elsewhere."""
        height, width = self.size
        if any(c < 0 for c in self.counts) or sum(self.counts) != height * width:
            raise ValueError(f"RLE counts must be non-negative and sum to {height} * {width}")
        rows = [[0] * width for _ in range(height)]
        at = 0
        for run, count in enumerate(self.counts):
            if run % 2:  # odd runs are the set pixels
                for pixel in range(at, at + count):
                    rows[pixel % height][pixel // height] = 1
            at += count
        return rows


@dataclass(frozen=True)
class Segment:
    """One segment an image-segmentation model found: its label, score (None for semantic
    segmentation, where every class present is a segment) and mask."""

    label: str
    score: float | None
    mask: Mask


@dataclass(frozen=True)
class Segments:
    """The answer to `segment`: the segments of each image, in input order."""

    id: str
    model: str
    segments: list[list[Segment]]
    usage: Usage
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Entities:
    """The answer to `extract_entities`: the entities of each text, in input order."""

    id: str
    model: str
    entities: list[list[Entity]]
    usage: Usage
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Model:
    """A model the key may use, with its serving status (`ready`, `not_loaded`, `loading`,
    `unloaded`, `unavailable` with its `reason`; `deleted` in a deletion's answer). `owned_by` is
    `system`, or `tenant` for a fine-tuned model."""

    id: str
    task: str | None
    status: str = "unknown"
    reason: str | None = None
    adapter: str | None = None
    dtype: str | None = None
    devices: list[str] = field(default_factory=list)
    replicas: int | None = None
    batching: JSON | None = None
    preload: bool | None = None
    pinned: bool | None = None  # kept resident: never evicted to make room for another model
    description: str = ""
    labels: int | None = None
    load_seconds: float | None = None
    owned_by: str | None = None
    created: int | None = None  # Unix time (OpenAI's `Model.created`)
    compile: JSON | None = None  # manifest `compile: true`: active, batch_sizes, reason, seconds
    cpu_linear: JSON | None = None  # a float32 model on a CPU: kernels, packed_layers, reason
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class KeyIdentity:
    """The key a client uses (`client.me()`): its id, its tenant's name, its scopes, the models it
    may use (None: every model it can see) and whether it is an admin key."""

    key_id: str
    tenant: str
    scopes: list[str] = field(default_factory=list)
    models: list[str] | None = None
    admin: bool = False
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Tenant:
    """A tenant (admin API): `status` is `active` or `suspended`; a limit left None is unlimited."""

    name: str
    id: str | None = None
    status: str | None = None
    rate_limit_rps: float | None = None
    max_concurrency: int | None = None
    monthly_quota_inputs: int | None = None
    allowed_models: list[str] | None = None
    created_at: str | None = None
    weight: float | None = None  # its share of a busy model's batches (default 1)
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class APIKey:
    """An API key (admin API). `key`, the secret, is only there in the answer that created (or
    rotated) it; `prefix` is its first characters, to recognise it in lists. `replaces` is the
    old key, in the answer of a rotation."""

    id: str
    tenant: str | None = None
    name: str | None = None
    prefix: str | None = None
    scopes: list[str] | None = None
    models: list[str] | None = None
    rate_limit_rps: float | None = None
    expires_at: str | None = None
    revoked_at: str | None = None
    last_used_at: str | None = None
    created_at: str | None = None
    key: str | None = field(default=None, repr=False)
    replaces: APIKey | None = field(default=None, repr=False)
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked. (A rotated key is not revoked: its `expires_at` is
        moved to the end of its grace period.)"""
        return self.revoked_at is not None


@dataclass(frozen=True)
class UsageRow:
    """One group of a usage report. The group's keys (`model`, `day`, `key`, and for admins
    `tenant` with `tenant_name`) are set when grouped by them, else None. Rows are split by `kind`:
    `inference` rows count billed inputs of answered requests in `inputs`, `training` rows (one
    per fine-tuning job) the samples trained; `errors` counts requests or jobs that failed."""

    requests: int
    errors: int
    inputs: int
    compute_seconds: Decimal
    cost_micro: int
    cost: Decimal
    model: str | None = None
    day: str | None = None
    key: str | None = None
    tenant: str | None = None
    tenant_name: str | None = None
    kind: str = "inference"
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class UsageReport:
    """Usage and cost in [`start`, `end`): one row per group (`group_by`), or one row in all
    when not grouped (none when there was no request); totals over every row."""

    data: list[UsageRow]
    start: str | None = None
    end: str | None = None
    group_by: list[str] = field(default_factory=list)
    total_cost_micro: int = 0
    total_cost: Decimal = Decimal(0)
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class InvoiceLine:
    """One line of a billing export: a tenant's answered requests (`kind` `inference`) or
    fine-tuning jobs (`kind` `training`, `inputs` = samples trained) on one model at one unit
    price (a price change within the month gives two lines)."""

    tenant: str
    model: str
    inputs: int
    requests: int
    amount_micro: int
    amount: Decimal
    tenant_id: str | None = None
    compute_seconds: Decimal | None = None
    unit_price: Decimal | None = None
    unit_price_micro: int | None = None
    compute_second_price_micro: int | None = None
    kind: str = "inference"
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class BillingExport:
    """A month's invoice lines for every tenant (admin API), with their total."""

    period: str
    lines: list[InvoiceLine]
    total_micro: int
    total: Decimal
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class FileObject:
    """An uploaded file (a fine-tuning dataset), checked on upload. `summary` describes the
    dataset: its `kind` (`images` or `text`), `format` (`zip`, `jsonl`, `csv`), `labels`,
    example counts per label for `train` and `validation`, and `examples` (`images` too, for
    an image zip)."""

    id: str
    filename: str | None = None
    purpose: str | None = None
    bytes: int | None = None
    status: str | None = None
    summary: JSON | None = None
    created_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def labels(self) -> list[str]:
        """The dataset's labels (empty when the gateway did not say)."""
        return [str(label) for label in (self.summary or {}).get("labels") or []]

    @property
    def examples(self) -> int | None:
        """How many examples (images or texts) the dataset holds; None when the gateway did not say."""
        summary = self.summary or {}
        count = summary.get("examples", summary.get("images"))
        return int(count) if count is not None else None


@dataclass(frozen=True)
class FineTuneProgress:
    """How far a job has come: optimizer steps and epochs, done and in all (None until known)."""

    steps_done: int = 0
    steps_total: int | None = None
    epochs_done: int = 0
    epochs_total: int | None = None

    @property
    def fraction(self) -> float | None:
        """Steps done over steps in all, in [0, 1]; None before the job knows its step count."""
        if not self.steps_total:
            return None
        return min(1.0, self.steps_done / self.steps_total)


@dataclass(frozen=True)
class FineTuneUsage:
    """What a job has used so far: device time and samples trained on (metered like inference)."""

    device_seconds: float = 0.0
    trained_samples: int = 0


@dataclass(frozen=True)
class FineTuneJob:
    """A fine-tuning job: `status` is queued, running, succeeded, failed or cancelled; a job that
    succeeded names `fine_tuned_model`, callable at once by its tenant. `metrics` holds the
    trainer's results (`validation_accuracy`, `validation_loss`, `train_loss`, per-epoch
    `epochs`, ...); `error` says why a job failed."""

    id: str
    status: str = "unknown"
    base_model: str | None = None
    fine_tuned_model: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    method: str | None = None
    suffix: str | None = None
    priority: str | None = None
    hyperparameters: JSON | None = None
    progress: FineTuneProgress = field(default_factory=FineTuneProgress)
    metrics: JSON | None = None
    usage: FineTuneUsage = field(default_factory=FineTuneUsage)
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class FineTuneEvent:
    """One line of a fine-tuning job's log, oldest first: `type` is status, epoch, resume, error or
    message; `data` carries its details (the new status, an epoch's metrics, ...)."""

    message: str
    id: int | None = None
    type: str | None = None
    level: str | None = None
    data: Any = None
    created_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class BatchCounts:
    """A batch job's inputs: in all, answered so far (billed), and with an error line (free)."""

    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Batch:
    """An asynchronous batch job: `status` is queued, running, completed, failed or cancelled;
    `error` says why a job failed as a whole (one bad input is an error line in its results)."""

    id: str
    status: str = "unknown"
    model: str | None = None
    input_file: str | None = None
    counts: BatchCounts = field(default_factory=BatchCounts)
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the job has completed, failed or been cancelled."""
        return self.status in BATCH_TERMINAL_STATUSES
