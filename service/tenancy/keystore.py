"""Key stores: a presented key -> the `Principal` it identifies, or None.

Keys live in the database as SHA-256 hashes (`DatabaseKeyStore`, with a short in-process cache);
`MAAS_ADMIN_KEY`, when set, is accepted as an admin key as is (`AdminKeyStore`).
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import ApiKey, Tenant
from service.errors import PermissionDenied
from service.tenancy.keys import SCOPES, hash_key
from service.tenancy.principal import Principal


class KeyStore(Protocol):
    """Anything that maps a presented key to a Principal (the database-backed store slots in here)."""

    def verify(self, key: str) -> Principal | None: ...


class AdminKeyStore:
    """Accepts exactly the bootstrap admin key."""

    def __init__(self, admin_key: str, tenant_id: str | None = None) -> None:
        self._digest = hash_key(admin_key)
        self._principal = Principal(key_id="key_admin", tenant="default", scopes=SCOPES, tenant_id=tenant_id)

    def verify(self, key: str) -> Principal | None:
        if secrets.compare_digest(hash_key(key), self._digest):
            return self._principal
        return None


class NotCached(enum.Enum):
    """What `DatabaseKeyStore.verify_cached` answers for a key it would have to look up."""

    NOT_CACHED = "not cached"


NOT_CACHED = NotCached.NOT_CACHED
CACHE_TTL_S = 1.0  # the longest a revoked key or suspended tenant can still get through
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key


@dataclass(frozen=True)
class _Cached:
    principal: Principal | None
    expires_at: datetime | None  # the key's own expiry, checked on every hit
    suspended: bool
    until: float  # clock() time after which the entry is looked up again


class DatabaseKeyStore:
    """Keys from the `api_keys` table, looked up by hash. Answers are cached in-process for at
    most `ttl_s` (1 s), so a revocation or suspension made by any process sharing the
    database takes effect here within that time; `forget()` (called on a change published
    through Redis, see `service.tenancy.keychanges`) makes it hold on the next request. `fallback`
    (the bootstrap admin key) is checked first. A suspended tenant's key raises 403 rather
    than answering None (401)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        fallback: KeyStore | None = None,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_entries: int = 10_000,
    ) -> None:
        if not 0 <= ttl_s <= CACHE_TTL_S:
            raise ValueError(f"the key cache may keep answers at most {CACHE_TTL_S}s")
        self._sessions = sessions
        self._fallback = fallback
        self._ttl_s = ttl_s
        self._clock = clock
        self._now = now
        self._max_entries = max_entries
        self._cache: dict[str, _Cached] = {}
        self._generation = 0  # bumped by forget(): a lookup begun before a change is not cached
        self._lock = threading.Lock()

    def verify(self, key: str) -> Principal | None:
        """The key's principal, or None; may look the key up in the database (blocking)."""
        found = self.verify_cached(key)
        if found is not NOT_CACHED:
            return found
        digest = hash_key(key)
        with self._lock:
            generation = self._generation
        cached = self._lookup(digest)
        with self._lock:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()  # crude, but bounded: a flood of random keys cannot grow it
            if generation == self._generation:  # else it may predate a change: not kept
                self._cache[digest] = cached
        return self._answer(cached)

    def verify_cached(self, key: str) -> Principal | NotCached | None:
        """`verify` without the database: the answer where the cache (or the fallback) has it,
        else `NOT_CACHED` (then `verify`, off the event loop). Never blocks."""
        if self._fallback is not None and (principal := self._fallback.verify(key)) is not None:
            return principal
        with self._lock:
            cached = self._cache.get(hash_key(key))
        if cached is None or self._clock() >= cached.until:
            return NOT_CACHED
        return self._answer(cached)

    def _answer(self, cached: _Cached) -> Principal | None:
        if cached.principal is None:
            return None
        if cached.expires_at is not None and self._now() >= cached.expires_at:
            return None
        if cached.suspended:
            raise PermissionDenied(f"tenant {cached.principal.tenant!r} is suspended")
        return cached.principal

    def forget(self) -> None:
        """Drop every cached answer (a key or a tenant changed, here or, through `KeyChanges`,
        on another replica): the next request looks its key up again."""
        with self._lock:
            self._cache.clear()
            self._generation += 1

    def _lookup(self, digest: str) -> _Cached:
        until = self._clock() + self._ttl_s
        now = self._now()
        with self._sessions.begin() as session:
            query = select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id)
            row = session.execute(query.where(ApiKey.key_hash == digest)).first()
            # The unique index found it; compare anyway so that no match rests on `==` alone.
            if row is None or not secrets.compare_digest(row[0].key_hash, digest):
                return _Cached(None, None, False, until)
            key, tenant = row
            if key.revoked_at is not None and key.revoked_at <= now:
                return _Cached(None, None, False, until)
            if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
                session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == key.id)
                    .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_EVERY))
                    .values(last_used_at=now)
                )
        models = _intersect(key.models, tenant.allowed_models)
        principal = Principal(
            key_id=key.id,
            tenant=tenant.name,
            scopes=frozenset(key.scopes),
            models=models,
            tenant_id=tenant.id,
            model_lists=tuple(frozenset(m) for m in (key.models, tenant.allowed_models) if m is not None),
            rate_limit_rps=key.rate_limit_rps,
            tenant_rate_limit_rps=tenant.rate_limit_rps,
            max_concurrency=tenant.max_concurrency,
            monthly_quota_inputs=tenant.monthly_quota_inputs,
            weight=tenant.weight,
        )
        return _Cached(principal, key.expires_at, tenant.status == "suspended", until)


def _intersect(first: list[str] | None, second: list[str] | None) -> frozenset[str] | None:
    """Two allow-lists (None: everything) -> the models both allow."""
    if first is None and second is None:
        return None
    if first is None or second is None:
        return frozenset(first if first is not None else second or [])
    return frozenset(first) & frozenset(second)
