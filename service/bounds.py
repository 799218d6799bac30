"""What the database can hold, checked where a request comes in (a 422, or a 400 for the URL),
never found out by the database (a 500): the range of every number a request may carry, and
text without what PostgreSQL refuses (NUL bytes; lone surrogates, which are not UTF-8).

One place for every limit, so the request models, the checks and the documented ranges
(docs: the README's "Value ranges") cannot disagree.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

INT32_MAX = 2**31 - 1  # an Integer column
INT64_MAX = 2**63 - 1  # a BigInteger column

# admin: tenants and keys
MAX_RATE_LIMIT_RPS = 1_000_000.0
MAX_CONCURRENCY = 100_000  # an Integer column
MAX_MONTHLY_QUOTA_INPUTS = 10**15  # a BigInteger column
MAX_GRACE_SECONDS = timedelta(days=30).total_seconds()
MAX_NAME_CHARS = 128  # a key's name, a model's name
MAX_NAMES = 1000  # models in an allow-list
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0  # a tenant's share of a contended batch

# fine-tuning hyperparameters (kept in a JSON column, used by torch and `random`)
MAX_EPOCHS = 1000
MAX_LEARNING_RATE = 1.0
MAX_BATCH_SIZE = 1024
MAX_SEED = 2**32 - 1  # seeds every epoch as seed + epoch, within torch's 64-bit range
MAX_LORA_RANK = 256
MAX_LORA_ALPHA = 4096
MAX_ID_CHARS = 255  # a file id, a base model's name as given

# predict
MAX_TOP_K = 1000
MAX_CANDIDATE_LABELS = 100  # zero-shot classification: labels per request
MAX_LABEL_CHARS = 200  # one candidate label

# times and billing periods: what Python (and so both databases) can hold in UTC
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)
FIRST_PERIOD = "0001-01"
LAST_PERIOD = "9998-12"  # the last month whose end is still a time
PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")

_REFUSED = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def text_problem(text: str) -> str | None:
    """Why the database cannot store `text`, or None when it can."""
    found = _REFUSED.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "holds a NUL byte"
    return "holds a lone surrogate (not valid UTF-8)"


def storable(text: str) -> str:
    """`text` with what the database refuses replaced by U+FFFD: for text we record, not refuse."""
    return _REFUSED.sub(REPLACEMENT, text)


def _plain_text(text: str) -> str:
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


def in_utc(when: datetime) -> datetime:
    """`when` in UTC (a time without a zone is UTC); ValueError when UTC cannot hold it."""
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"must be a time from {EARLIEST.date()} to {LATEST.date()} in UTC") from None


def _in_utc(when: datetime | None) -> datetime | None:
    return None if when is None else in_utc(when)


def _period(period: str) -> str:
    if not PERIOD.fullmatch(period) or not FIRST_PERIOD <= period <= LAST_PERIOD:
        raise ValueError(f"must be a month YYYY-MM from {FIRST_PERIOD} to {LAST_PERIOD}")
    return period


# the types request models use
Text = Annotated[str, AfterValidator(_plain_text)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS), AfterValidator(_plain_text)]
Ref = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS), AfterValidator(_plain_text)]
Names = Annotated[list[Name], Field(max_length=MAX_NAMES)]
Rps = Annotated[float, Field(gt=0, le=MAX_RATE_LIMIT_RPS, allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=MIN_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False)]
Concurrency = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]
QuotaInputs = Annotated[int, Field(ge=0, le=MAX_MONTHLY_QUOTA_INPUTS)]
GraceSeconds = Annotated[float, Field(ge=0, le=MAX_GRACE_SECONDS, allow_inf_nan=False)]
UtcTime = Annotated[datetime, AfterValidator(in_utc)]
OptionalUtcTime = Annotated[datetime | None, AfterValidator(_in_utc)]
Period = Annotated[str, AfterValidator(_period)]
