"""Typed results. Each is a frozen dataclass built from the gateway's JSON; `raw` keeps the whole
answer, so fields the gateway adds later are reachable before this client names them. Fields the
gateway leaves out read as None (or empty), and fields it adds are ignored: an older client keeps
working against a newer gateway. Statuses stay plain strings for the same reason."""

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


def _opt_str(data: JSON, key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _opt_int(data: JSON, key: str) -> int | None:
    value = data.get(key)
    return None if value is None else int(value)


def _opt_float(data: JSON, key: str) -> float | None:
    value = data.get(key)
    return None if value is None else float(value)


def _opt_decimal(data: JSON, key: str) -> Decimal | None:
    # Money and seconds come as decimal strings ("0.000200"): Decimal keeps them exact.
    value = data.get(key)
    return None if value is None else Decimal(str(value))


def _decimal(data: JSON, key: str) -> Decimal:
    # Zero when left out; a zero the gateway sent keeps its scale ("0.000000", not "0").
    value = _opt_decimal(data, key)
    return Decimal(0) if value is None else value


def _opt_dict(data: JSON, key: str) -> JSON | None:
    value = data.get(key)
    return value if isinstance(value, dict) else None


def _opt_strs(data: JSON, key: str) -> list[str] | None:
    value = data.get(key)
    return None if value is None else [str(v) for v in value]


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

    @classmethod
    def from_json(cls, data: JSON | None) -> Usage:
        data = data or {}
        return cls(
            inputs=int(data.get("inputs", 0)),
            compute_ms=_opt_float(data, "compute_ms"),
            cost_micro=_opt_int(data, "cost_micro"),
            cost=_opt_decimal(data, "cost"),
        )


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

    @classmethod
    def from_json(cls, data: JSON) -> Prediction:
        embeddings = data.get("embeddings")
        return cls(
            id=str(data.get("id", "")),
            model=str(data.get("model", "")),
            predictions=[
                [Label(str(p["label"]), float(p["score"])) for p in ranked]
                for ranked in data.get("predictions") or []
            ],
            usage=Usage.from_json(data.get("usage")),
            embeddings=None if embeddings is None else [[float(x) for x in v] for v in embeddings],
            raw=data,
        )

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

    @classmethod
    def from_json(cls, data: JSON) -> Embeddings:
        return cls(
            id=str(data.get("id", "")),
            model=str(data.get("model", "")),
            embeddings=[[float(x) for x in v] for v in data.get("embeddings") or []],
            usage=Usage.from_json(data.get("usage")),
            raw=data,
        )


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
class Entities:
    """The answer to `extract_entities`: the entities of each text, in input order."""

    id: str
    model: str
    entities: list[list[Entity]]
    usage: Usage
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> Entities:
        return cls(
            id=str(data.get("id", "")),
            model=str(data.get("model", "")),
            entities=[
                [
                    Entity(
                        str(e["entity_group"]),
                        float(e["score"]),
                        str(e["word"]),
                        int(e["start"]),
                        int(e["end"]),
                    )
                    for e in found
                ]
                for found in data.get("entities") or []
            ],
            usage=Usage.from_json(data.get("usage")),
            raw=data,
        )


@dataclass(frozen=True)
class Model:
    """A model the key may use, with its serving status (`ready`, `not_loaded`, `loading`,
    `unavailable` with its `reason`). `owned_by` is `system`, or `tenant` for a fine-tuned model."""

    id: str
    task: str | None
    status: str
    reason: str | None = None
    adapter: str | None = None
    dtype: str | None = None
    devices: list[str] = field(default_factory=list)
    replicas: int | None = None
    batching: JSON | None = None
    preload: bool | None = None
    description: str = ""
    labels: int | None = None
    load_seconds: float | None = None
    owned_by: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> Model:
        preload = data.get("preload")
        return cls(
            id=str(data["id"]),
            task=_opt_str(data, "task"),
            status=str(data.get("status", "unknown")),
            reason=_opt_str(data, "reason"),
            adapter=_opt_str(data, "adapter"),
            dtype=_opt_str(data, "dtype"),
            devices=[str(d) for d in data.get("devices") or []],
            replicas=_opt_int(data, "replicas"),
            batching=_opt_dict(data, "batching"),
            preload=None if preload is None else bool(preload),
            description=str(data.get("description") or ""),
            labels=_opt_int(data, "labels"),
            load_seconds=_opt_float(data, "load_seconds"),
            owned_by=_opt_str(data, "owned_by"),
            raw=data,
        )


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

    @classmethod
    def from_json(cls, data: JSON) -> Tenant:
        return cls(
            name=str(data.get("name", "")),
            id=_opt_str(data, "id"),
            status=_opt_str(data, "status"),
            rate_limit_rps=_opt_float(data, "rate_limit_rps"),
            max_concurrency=_opt_int(data, "max_concurrency"),
            monthly_quota_inputs=_opt_int(data, "monthly_quota_inputs"),
            allowed_models=_opt_strs(data, "allowed_models"),
            created_at=_opt_str(data, "created_at"),
            weight=_opt_float(data, "weight"),
            raw=data,
        )


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

    @classmethod
    def from_json(cls, data: JSON) -> APIKey:
        replaces = _opt_dict(data, "replaces")
        return cls(
            id=str(data.get("id", "")),
            tenant=_opt_str(data, "tenant"),
            name=_opt_str(data, "name"),
            prefix=_opt_str(data, "prefix"),
            scopes=_opt_strs(data, "scopes"),
            models=_opt_strs(data, "models"),
            rate_limit_rps=_opt_float(data, "rate_limit_rps"),
            expires_at=_opt_str(data, "expires_at"),
            revoked_at=_opt_str(data, "revoked_at"),
            last_used_at=_opt_str(data, "last_used_at"),
            created_at=_opt_str(data, "created_at"),
            key=_opt_str(data, "key"),
            replaces=None if replaces is None else APIKey.from_json(replaces),
            raw=data,
        )

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

    @classmethod
    def from_json(cls, data: JSON) -> UsageRow:
        return cls(
            requests=int(data.get("requests", 0)),
            errors=int(data.get("errors", 0)),
            inputs=int(data.get("inputs", 0)),
            compute_seconds=_decimal(data, "compute_seconds"),
            cost_micro=int(data.get("cost_micro", 0)),
            cost=_decimal(data, "cost"),
            model=_opt_str(data, "model"),
            day=_opt_str(data, "day"),
            key=_opt_str(data, "key"),
            tenant=_opt_str(data, "tenant"),
            tenant_name=_opt_str(data, "tenant_name"),
            kind=_opt_str(data, "kind") or "inference",
            raw=data,
        )


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

    @classmethod
    def from_json(cls, data: JSON) -> UsageReport:
        rows = data.get("data")
        return cls(
            data=[UsageRow.from_json(r) for r in rows] if isinstance(rows, list) else [],
            start=_opt_str(data, "start"),
            end=_opt_str(data, "end"),
            group_by=_opt_strs(data, "group_by") or [],
            total_cost_micro=int(data.get("total_cost_micro", 0)),
            total_cost=_decimal(data, "total_cost"),
            raw=data,
        )


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

    @classmethod
    def from_json(cls, data: JSON) -> InvoiceLine:
        return cls(
            tenant=str(data.get("tenant", "")),
            model=str(data.get("model", "")),
            inputs=int(data.get("inputs", 0)),
            requests=int(data.get("requests", 0)),
            amount_micro=int(data.get("amount_micro", 0)),
            amount=_decimal(data, "amount"),
            tenant_id=_opt_str(data, "tenant_id"),
            compute_seconds=_opt_decimal(data, "compute_seconds"),
            unit_price=_opt_decimal(data, "unit_price"),
            unit_price_micro=_opt_int(data, "unit_price_micro"),
            compute_second_price_micro=_opt_int(data, "compute_second_price_micro"),
            kind=_opt_str(data, "kind") or "inference",
            raw=data,
        )


@dataclass(frozen=True)
class BillingExport:
    """A month's invoice lines for every tenant (admin API), with their total."""

    period: str
    lines: list[InvoiceLine]
    total_micro: int
    total: Decimal
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> BillingExport:
        lines = data.get("lines")
        return cls(
            period=str(data.get("period", "")),
            lines=[InvoiceLine.from_json(line) for line in lines] if isinstance(lines, list) else [],
            total_micro=int(data.get("total_micro", 0)),
            total=_decimal(data, "total"),
            raw=data,
        )


@dataclass(frozen=True)
class FileObject:
    """An uploaded file (a fine-tuning dataset), checked on upload. `summary` describes the
    dataset: `labels`, image counts per label for `train` and `validation`, and `images`."""

    id: str
    filename: str | None = None
    purpose: str | None = None
    bytes: int | None = None
    status: str | None = None
    summary: JSON | None = None
    created_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> FileObject:
        return cls(
            id=str(data.get("id", "")),
            filename=_opt_str(data, "filename"),
            purpose=_opt_str(data, "purpose"),
            bytes=_opt_int(data, "bytes"),
            status=_opt_str(data, "status"),
            summary=_opt_dict(data, "summary"),
            created_at=_opt_str(data, "created_at"),
            raw=data,
        )

    @property
    def labels(self) -> list[str]:
        """The dataset's labels (empty when the gateway did not say)."""
        return [str(label) for label in (self.summary or {}).get("labels") or []]


@dataclass(frozen=True)
class FineTuneProgress:
    """How far a job has come: optimizer steps and epochs, done and in all (None until known)."""

    steps_done: int = 0
    steps_total: int | None = None
    epochs_done: int = 0
    epochs_total: int | None = None

    @classmethod
    def from_json(cls, data: JSON | None) -> FineTuneProgress:
        data = data or {}
        return cls(
            steps_done=int(data.get("steps_done") or 0),
            steps_total=_opt_int(data, "steps_total"),
            epochs_done=int(data.get("epochs_done") or 0),
            epochs_total=_opt_int(data, "epochs_total"),
        )

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

    @classmethod
    def from_json(cls, data: JSON | None) -> FineTuneUsage:
        data = data or {}
        return cls(
            device_seconds=float(data.get("device_seconds") or 0.0),
            trained_samples=int(data.get("trained_samples") or 0),
        )


@dataclass(frozen=True)
class FineTuneJob:
    """A fine-tuning job: `status` is queued, running, succeeded, failed or cancelled; a job that
    succeeded names `fine_tuned_model`, callable at once by its tenant. `metrics` holds the
    trainer's results (`validation_accuracy`, `validation_loss`, `train_loss`, per-epoch
    `epochs`, ...); `error` says why a job failed."""

    id: str
    status: str
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

    @classmethod
    def from_json(cls, data: JSON) -> FineTuneJob:
        error = data.get("error")
        if isinstance(error, dict):  # an error object rather than a message: keep its message
            error = error.get("message") or str(error)
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "unknown")),
            base_model=_opt_str(data, "base_model"),
            fine_tuned_model=_opt_str(data, "fine_tuned_model"),
            training_file=_opt_str(data, "training_file"),
            validation_file=_opt_str(data, "validation_file"),
            method=_opt_str(data, "method"),
            suffix=_opt_str(data, "suffix"),
            priority=_opt_str(data, "priority"),
            hyperparameters=_opt_dict(data, "hyperparameters"),
            progress=FineTuneProgress.from_json(_opt_dict(data, "progress")),
            metrics=_opt_dict(data, "metrics"),
            usage=FineTuneUsage.from_json(_opt_dict(data, "usage")),
            error=None if error is None else str(error),
            created_at=_opt_str(data, "created_at"),
            started_at=_opt_str(data, "started_at"),
            finished_at=_opt_str(data, "finished_at"),
            raw=data,
        )

    @property
    def done(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class FineTuneEvent:
    """One line of a fine-tuning job's log, oldest first: `type` is status, epoch, resume, error or
    message; `data` carries its details (the new status, an epoch's metrics, ...)."""

    message: str
    id: str | None = None
    type: str | None = None
    level: str | None = None
    data: Any = None
    created_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> FineTuneEvent:
        return cls(
            message=str(data.get("message", "")),
            id=_opt_str(data, "id"),
            type=_opt_str(data, "type"),
            level=_opt_str(data, "level"),
            data=data.get("data"),
            created_at=_opt_str(data, "created_at"),
            raw=data,
        )
