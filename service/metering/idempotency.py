"""`Idempotency-Key`: a retry within the TTL gets the first answer and is not billed again.

Insert first: the (tenant, key) primary key makes the database pick exactly one winner among
concurrent first requests, across processes. The loser reads the row: another request hash ->
422, still `in_progress` -> 409, `done` -> replay its status, body and request id. The outcome
is written in the same transaction as the request's usage event (see writer.py), so a replay
and a billed event can never disagree. Server errors (5xx) and requests whose client left
release the key, so that a retry runs again; other 4xx answers are stored and replayed, as the
same request would fail the same way. An `in_progress` row older than the longest request
deadline (its process died) may be taken over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import IdempotencyRecord
from service.errors import InvalidRequest

MAX_KEY_CHARS = 255
_KEY_CHARS = frozenset(map(chr, range(0x20, 0x7F)))  # printable ASCII, space included


def parse_idempotency_key(value: str | None) -> str | None:
    """The `Idempotency-Key` header (None when absent): 1 to 255 printable ASCII characters, else
    400. It is stored, so a NUL or another control character must never get that far."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_KEY_CHARS or not value.strip() or not _KEY_CHARS.issuperset(value):
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters")
    return value


def request_hash(model: str, query: str, content_type: str, body: bytes) -> str:
    """What makes two requests 'the same': model, query string, media type and body bytes.

    A multipart body counts without its boundary: clients draw a new one for every attempt, so a
    retry of the same files must hash the same."""
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type == "multipart/form-data":
        boundary = _boundary(parameters)
        if boundary:
            body = body.replace(b"--" + boundary, b"--")
        parameters = ""
    digest = hashlib.sha256()
    for part in (model.encode(), query.encode(), media_type.encode(), parameters.strip().encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(body)
    return digest.hexdigest()


def _boundary(parameters: str) -> bytes:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"').encode("latin-1", "replace")
    return b""


class ClaimState(StrEnum):
    NEW = "new"  # this request runs, and owns the key until its outcome is written
    REPLAY = "replay"  # answered before: send `status` and `body` again
    RUNNING = "running"  # the first request is still running: 409
    MISMATCH = "mismatch"  # the key was used for another request: 422


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    request_id: str | None = None
    status: int | None = None
    body: bytes | None = None


class Idempotency:
    """Idempotency records in the database behind `sessions`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        ttl: timedelta = timedelta(hours=24),
        stale_after: timedelta = timedelta(minutes=11),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self.ttl = ttl
        self.stale_after = stale_after
        self._now = now

    def claim(self, tenant_id: str, key: str, digest: str, request_id: str) -> Claim:
        """Take `key` for this request, or say why not (blocking: call it on a worker thread)."""
        for _ in range(3):  # a row may vanish between our insert and our read (expired, released)
            now = self._now()
            with self._sessions.begin() as session:
                session.execute(
                    delete(IdempotencyRecord).where(
                        IdempotencyRecord.tenant_id == tenant_id,
                        IdempotencyRecord.key == key,
                        (IdempotencyRecord.created_at < now - self.ttl)
                        | (
                            (IdempotencyRecord.state == "in_progress")
                            & (IdempotencyRecord.created_at < now - self.stale_after)
                        ),
                    )
                )
            try:
                with self._sessions.begin() as session:
                    session.add(
                        IdempotencyRecord(
                            tenant_id=tenant_id,
                            key=key,
                            request_hash=digest,
                            state="in_progress",
                            request_id=request_id,
                            created_at=now,
                        )
                    )
                return Claim(ClaimState.NEW, request_id)
            except IntegrityError:
                pass
            with self._sessions() as session:
                row = session.get(IdempotencyRecord, (tenant_id, key))
                if row is None:
                    continue
                if row.request_hash != digest:
                    return Claim(ClaimState.MISMATCH, row.request_id)
                if row.state != "done":
                    return Claim(ClaimState.RUNNING, row.request_id)
                return Claim(ClaimState.REPLAY, row.request_id, row.status, row.response_body)
        return Claim(ClaimState.RUNNING)
