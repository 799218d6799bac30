"""Metering: usage events written with group commit, idempotency keys, the price book, and the
usage and billing reports. See docs/billing.md."""

from service.metering.idempotency import Claim, ClaimState, Idempotency, request_hash
from service.metering.meter import Meter, UsageMetrics, UsageUnavailable
from service.metering.metered import MeteredRequest
from service.metering.prices import (
    BATCH,
    INFERENCE,
    TRAINING,
    PriceBook,
    UnitPrice,
    format_micro,
    manifest_prices,
    to_micro,
)
from service.metering.writer import Outcome, Usage, UsageWriter, insert_usage

__all__ = [
    "BATCH",
    "INFERENCE",
    "TRAINING",
    "Claim",
    "ClaimState",
    "Idempotency",
    "Meter",
    "MeteredRequest",
    "Outcome",
    "PriceBook",
    "UnitPrice",
    "Usage",
    "UsageMetrics",
    "UsageUnavailable",
    "UsageWriter",
    "format_micro",
    "insert_usage",
    "manifest_prices",
    "request_hash",
    "to_micro",
]
