"""Metering: usage events written with group commit, idempotency keys, the price book, and the
usage and billing reports. See the README's "Usage and billing"."""

from service.metering.idempotency import Claim, ClaimState, Idempotency, request_hash
from service.metering.meter import Meter, UsageMetrics, UsageUnavailable
from service.metering.prices import PriceBook, UnitPrice, format_micro, to_micro
from service.metering.writer import Outcome, Usage, UsageWriter

__all__ = [
    "Claim",
    "ClaimState",
    "Idempotency",
    "Meter",
    "Outcome",
    "PriceBook",
    "UnitPrice",
    "Usage",
    "UsageMetrics",
    "UsageUnavailable",
    "UsageWriter",
    "format_micro",
    "request_hash",
    "to_micro",
]
