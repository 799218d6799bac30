"""Typed results. Each is a frozen dataclass built from the gateway's JSON; `raw` keeps the whole
answer, so fields the gateway adds later are reachable before this client names them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "APIKey",
    "Embeddings",
    "FileObject",
    "FineTuneEvent",
    "FineTuneJob",
    "Label",
    "Model",
    "Prediction",
    "Tenant",
    "Usage",
    "UsageReport",
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
    """What a request consumed."""

    inputs: int

    @classmethod
    def from_json(cls, data: JSON | None) -> Usage:
        return cls(inputs=int((data or {}).get("inputs", 0)))


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
    """The answer to `embed`: one vector per text, in input order."""

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
class Model:
    """A model the key may use, with its serving status."""

    id: str
    task: str | None
    status: str
    reason: str | None = None
    dtype: str | None = None
    devices: list[str] = field(default_factory=list)
    description: str = ""
    labels: int | None = None
    batching: JSON | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> Model:
        return cls(
            id=str(data["id"]),
            task=_opt_str(data, "task"),
            status=str(data.get("status", "unknown")),
            reason=_opt_str(data, "reason"),
            dtype=_opt_str(data, "dtype"),
            devices=[str(d) for d in data.get("devices") or []],
            description=str(data.get("description") or ""),
            labels=_opt_int(data, "labels"),
            batching=data.get("batching"),
            raw=data,
        )


@dataclass(frozen=True)
class Tenant:
    """A tenant (admin API)."""

    name: str
    id: str | None = None
    status: str | None = None
    rate_limit_rps: float | None = None
    max_concurrency: int | None = None
    monthly_quota_inputs: int | None = None
    allowed_models: list[str] | None = None
    created_at: str | None = None
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
            raw=data,
        )


@dataclass(frozen=True)
class APIKey:
    """An API key (admin API). `key`, the secret, is only there in the answer that created it."""

    id: str
    tenant: str | None = None
    name: str | None = None
    scopes: list[str] | None = None
    models: list[str] | None = None
    expires_at: str | None = None
    created_at: str | None = None
    revoked: bool = False
    key: str | None = field(default=None, repr=False)
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> APIKey:
        return cls(
            id=str(data.get("id", "")),
            tenant=_opt_str(data, "tenant"),
            name=_opt_str(data, "name"),
            scopes=_opt_strs(data, "scopes"),
            models=_opt_strs(data, "models"),
            expires_at=_opt_str(data, "expires_at"),
            created_at=_opt_str(data, "created_at"),
            revoked=bool(data.get("revoked") or data.get("revoked_at")),
            key=_opt_str(data, "key"),
            raw=data,
        )


@dataclass(frozen=True)
class UsageReport:
    """The caller's usage and cost: one row per group (`group_by`), as the gateway sends them."""

    data: list[JSON]
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> UsageReport:
        rows = data.get("data")
        return cls(data=list(rows) if isinstance(rows, list) else [], raw=data)


@dataclass(frozen=True)
class FileObject:
    """An uploaded file (a fine-tuning dataset)."""

    id: str
    filename: str | None = None
    purpose: str | None = None
    bytes: int | None = None
    created_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> FileObject:
        return cls(
            id=str(data.get("id", "")),
            filename=_opt_str(data, "filename"),
            purpose=_opt_str(data, "purpose"),
            bytes=_opt_int(data, "bytes"),
            created_at=_opt_str(data, "created_at"),
            raw=data,
        )


@dataclass(frozen=True)
class FineTuneJob:
    """A fine-tuning job: `status` is queued, running, succeeded, failed or cancelled; a finished
    job names `fine_tuned_model`."""

    id: str
    status: str
    base_model: str | None = None
    fine_tuned_model: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    hyperparameters: JSON | None = None
    error: Any = None
    created_at: str | None = None
    finished_at: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> FineTuneJob:
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "unknown")),
            base_model=_opt_str(data, "base_model"),
            fine_tuned_model=_opt_str(data, "fine_tuned_model"),
            training_file=_opt_str(data, "training_file"),
            validation_file=_opt_str(data, "validation_file"),
            hyperparameters=data.get("hyperparameters"),
            error=data.get("error"),
            created_at=_opt_str(data, "created_at"),
            finished_at=_opt_str(data, "finished_at"),
            raw=data,
        )

    @property
    def done(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class FineTuneEvent:
    """One line of a fine-tuning job's log (progress, metrics, status changes)."""

    message: str
    id: str | None = None
    created_at: str | None = None
    level: str | None = None
    data: Any = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSON) -> FineTuneEvent:
        return cls(
            message=str(data.get("message", "")),
            id=_opt_str(data, "id"),
            created_at=_opt_str(data, "created_at"),
            level=_opt_str(data, "level"),
            data=data.get("data"),
            raw=data,
        )
