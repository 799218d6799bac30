"""API keys: generate, hash, verify in constant time, and the caller (`Principal`) they identify.

Keys live in the database as SHA-256 hashes (`DatabaseKeyStore`); `MAAS_ADMIN_KEY`, when set,
is accepted as an admin key as is (`AdminKeyStore`). A key is never logged, never put in an
error message or a metric label; only its hash is kept, in the database and in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from service.db.models import ApiKey, Tenant
from service.errors import AuthenticationFailed, NotFound, PermissionDenied

KEY_PREFIX = "mk_"
SCOPES = frozenset({"inference", "fine_tune", "admin"})


def generate_key() -> str:
    """A new API key: `mk_` + 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_KEY_IN_TEXT = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{8,}")


def redact(text: str) -> str:
    return _KEY_IN_TEXT.sub(KEY_PREFIX + "[redacted]", text)


class RedactKeys(logging.Filter):
    """A safety net for log lines we do not write ourselves (a key pasted into a URL ends up in
    the access log): anything shaped like a key is replaced. Arguments stay a tuple, as
    uvicorn's access formatter needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_keys_in_logs() -> None:
    """Install `RedactKeys` on the loggers that echo request lines (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())


@dataclass(frozen=True)
class Principal:
    """Who is calling: their key, tenant, scopes, the models they may use (None: every public
    model), and the limits that apply to them (None: no limit of that kind)."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    tenant_id: str | None = None
    # the lists `models` was made from (the key's, the tenant's), each checked for fine-tuned models
    model_lists: tuple[frozenset[str], ...] = ()
    rate_limit_rps: float | None = None  # the key's own bucket
    tenant_rate_limit_rps: float | None = None  # the bucket all the tenant's keys share
    max_concurrency: int | None = None  # the tenant's requests in flight
    monthly_quota_inputs: int | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes and not self.is_admin:
            raise PermissionDenied(f"this key lacks the {scope!r} scope")

    def can_see(self, owner: str | None) -> bool:
        """The one visibility rule: public models (no owner) for all, private ones for their tenant only."""
        return owner is None or owner == self.tenant_id

    def allowed(self, model: str, owner: str | None = None, base: str | None = None) -> bool:
        """Whether the key's and tenant's model lists let it use `model`. A tenant's fine-tuned model
        (one with an `owner`) is allowed where the list names it or the public model it was
        trained from (`base`): allowing a base allows the tenant's own versions of it."""
        if self.models is None or model in self.models:
            return True
        if owner is None or base is None:
            return False
        return all(model in allow or base in allow for allow in self.model_lists or (self.models,))

    def may_use(self, model: str, owner: str | None = None, base: str | None = None) -> bool:
        """Whether `model` belongs in this caller's models list."""
        return self.can_see(owner) and self.allowed(model, owner, base)

    def require_model(self, model: str, owner: str | None = None, base: str | None = None) -> None:
        """404 for a model this caller may not even know of (another tenant's), 403 for one it may not use."""
        if not self.can_see(owner):
            raise NotFound(f"model {model!r} not found")
        if not self.allowed(model, owner, base):
            raise PermissionDenied(f"this key is not allowed to use model {model!r}")


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
    through Redis, see `service.keychanges`) makes it hold on the next request. `fallback`
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
        if self._fallback is not None and (principal := self._fallback.verify(key)) is not None:
            return principal
        digest = hash_key(key)
        with self._lock:
            cached = self._cache.get(digest)
            generation = self._generation
        if cached is None or self._clock() >= cached.until:
            cached = self._lookup(digest)
            with self._lock:
                if len(self._cache) >= self._max_entries:
                    self._cache.clear()  # crude, but bounded: a flood of random keys cannot grow it
                if generation == self._generation:  # else it may predate a change: not kept
                    self._cache[digest] = cached
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
        )
        return _Cached(principal, key.expires_at, tenant.status == "suspended", until)


def _intersect(first: list[str] | None, second: list[str] | None) -> frozenset[str] | None:
    """Two allow-lists (None: everything) -> the models both allow."""
    if first is None and second is None:
        return None
    if first is None or second is None:
        return frozenset(first if first is not None else second or [])
    return frozenset(first) & frozenset(second)


@dataclass(frozen=True)
class AdminKey:
    key: str
    path: Path | None  # where it is kept, when generated
    generated: bool  # True only on the start that created it: print it then, once


ADMIN_KEY_WAIT_S = 5.0  # how long a start waits for another one that is writing admin.key


def bootstrap_admin_key(
    configured: str | None, data_dir: Path, *, wait_s: float = ADMIN_KEY_WAIT_S
) -> AdminKey:
    """The configured admin key, else the one kept in `data_dir/admin.key`, else a new one.

    Safe for replicas starting together on one shared data directory: the file is created with
    O_EXCL, so exactly one start generates the key and every other one reads that same key."""
    if configured:
        return AdminKey(configured, None, generated=False)
    path = data_dir / "admin.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            key = generate_key()
            if _create_exclusively(path, key + "\n"):
                return AdminKey(key, path, generated=True)
            continue  # another start created it first: read its key
        if key:
            return AdminKey(key, path, generated=False)
        if time.monotonic() < deadline:
            # empty: another start has just created it and is about to write its key into it
            time.sleep(0.01)  # waiting for that one write(), with a deadline
            continue
        # still blank: left by a start that died before writing (or made by hand); replace it
        with contextlib.suppress(FileNotFoundError):
            if not path.read_text(encoding="utf-8").strip():
                path.unlink()


def _create_exclusively(path: Path, text: str) -> bool:
    """Create `path` (mode 0600) holding `text`; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # never leave an empty file for the next start to wait on
        raise
    os.close(fd)
    return True


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
    return token


def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401."""
    store: KeyStore = request.app.state.keys
    principal = store.verify(bearer_token(request))
    if principal is None:
        raise AuthenticationFailed("invalid API key")
    request.state.principal = principal  # for the access log (tenant, key id; never the key)
    return principal
