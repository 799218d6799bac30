"""The tables: tenants, their API keys, the monthly input counts that enforce quotas, and
metering's usage events, idempotency records and price book; fine-tuning (uploaded dataset
files, jobs and their events).

Times are stored as naive UTC (SQLite has no time zones) and read back as aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def iso(when: datetime | None) -> str | None:
    """A row's timestamp as the API shows it: ISO 8601, or None when unset."""
    return when.isoformat() if when else None


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as aware UTC, is stored naive, and comes out aware UTC again."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | suspended
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every public model
    rate_limit_rps: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_quota_inputs: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")  # its share of a batch
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 hex; never the key
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists so a person can tell keys apart
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: the tenant's models
    rate_limit_rps: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuotaUsage(Base):
    """Inputs run per tenant per calendar month (UTC): only what the quota check needs.
    Usage events and billing are the metering module's, not this table's."""

    __tablename__ = "quota_usage"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    inputs: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageEvent(Base):
    """One answered inference request, written before its answer is sent, or one fine-tuning job's
    training, written when the job ends (`kind`). Money in micro-units (1e-6 of the currency),
    never floats; the unit prices applied are kept on the event."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_tenant_time", "tenant_id", "created_at"),)

    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)  # training: the job id
    kind: Mapped[str] = mapped_column(String(16), server_default="inference")  # inference | training | batch
    tenant_id: Mapped[str] = mapped_column(String(40))  # no foreign key: usage outlives a tenant row
    key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(128))  # training: the base model
    inputs: Mapped[int] = mapped_column(Integer)  # training: samples trained (every epoch counts)
    # inference: this request's share of its batches' forward time; training: the job's device time
    compute_us: Mapped[int] = mapped_column(BigInteger)
    queue_us: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status answered
    per_input_micro: Mapped[int] = mapped_column(BigInteger)
    per_compute_second_micro: Mapped[int] = mapped_column(BigInteger)
    amount_micro: Mapped[int] = mapped_column(BigInteger)  # 0 unless status is 200
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class IdempotencyRecord(Base):
    """An `Idempotency-Key` seen from a tenant: in progress, or done with the answer to replay."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_progress | done
    request_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PriceRow(Base):
    """A model's price from `effective_from` on, until the next row for that model."""

    __tablename__ = "prices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16), server_default="inference")  # inference | training | batch
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    per_input_micro: Mapped[int] = mapped_column(BigInteger)
    per_compute_second_micro: Mapped[int] = mapped_column(BigInteger)


class DatasetFile(Base):
    """An uploaded dataset (a zip in image-folder layout), kept under the data directory per tenant."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # processed (only valid files are kept)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)  # labels, counts per split and label
    path: Mapped[str] = mapped_column(String(1024))  # relative to the data directory
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FineTuneJob(Base):
    """One fine-tuning job: what to train, its progress, its lease (which replica runs it), its result."""

    __tablename__ = "fine_tune_jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_fine_tune_jobs_idempotency"),
        Index("ix_fine_tune_jobs_queue", "status", "priority", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    base_model: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(40), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # who created it: its usage's key
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|running|succeeded|failed|cancelled
    priority: Mapped[int] = mapped_column(Integer, server_default="0")  # higher runs first: 1 high, 0, -1 low
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    steps_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    device_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # metered: time on the device
    trained_samples: Mapped[int] = mapped_column(BigInteger, default=0)  # metered: samples seen
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FineTuneEvent(Base):
    """What happened to a job, in order: status changes, per-epoch metrics, resumes, errors."""

    __tablename__ = "fine_tune_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tune_jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(16))  # info | error
    type: Mapped[str] = mapped_column(String(32))  # status | epoch | resume | error | message
    message: Mapped[str] = mapped_column(String(2000))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BatchJob(Base):
    """One asynchronous batch job: a file of inputs run through a model in the `batch` service
    class. Its results are a JSONL file under the data directory, one line per input in order;
    `results_bytes` of it and the counts are the progress a resumed job starts from."""

    __tablename__ = "batch_jobs"
    __table_args__ = (Index("ix_batch_jobs_queue", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # who created it: its usage's key
    model: Mapped[str] = mapped_column(String(64))
    input_file: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))  # queued|running|completed|failed|cancelled
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    total: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer, default=0)  # inputs answered (billed)
    failed: Mapped[int] = mapped_column(Integer, default=0)  # inputs with an error line (free)
    results_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # of the results file, committed
    compute_us: Mapped[int] = mapped_column(BigInteger, default=0)  # the inputs' share of forward time
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RegisteredModel(Base):
    """A model registered through the admin API (manifests in the models folder are the defaults):
    the truth every replica converges on. A deleted one keeps its row (`deleted_at` set) so that
    replicas that missed the change still see it went."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)  # a valid ModelManifest, as JSON
    loaded: Mapped[bool] = mapped_column(default=True)  # wanted resident (false after an unload)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # each change: a version
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
