"""Tenants and their API keys: create, list, suspend, resume; create, list, revoke, rotate keys.

The one place that writes the `tenants` and `api_keys` tables; the admin API and the CLI are
thin layers over it. A key's plaintext leaves this module once, in `NewKey`, and is never stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.bounds import MAX_WEIGHT, MIN_WEIGHT
from service.db.models import ApiKey, Tenant, iso
from service.errors import Conflict, InvalidInput, NotFound
from service.ids import new_id
from service.redaction import KEY_PREFIX
from service.tenancy.keys import SCOPES, generate_key, hash_key

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DEFAULT_SCOPES = ("inference", "fine_tune")  # what a customer key needs; admin only when asked
PREFIX_CHARS = 8  # how much of a key (after `mk_`) lists show


@dataclass(frozen=True)
class NewKey:
    """A key just made: the row, and the plaintext, to be shown to its owner once."""

    row: ApiKey
    tenant: str
    key: str


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + PREFIX_CHARS]


def _check_name(name: str) -> str:
    if not TENANT_NAME.fullmatch(name):
        raise InvalidInput(
            f"tenant name {name!r}: use 1-63 characters a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise InvalidInput(f"scopes must be a non-empty subset of {sorted(SCOPES)}; got {chosen}")
    return chosen


def _check_weight(weight: float | None) -> float:
    """A weight within its range (None: back to the default, 1)."""
    if weight is None:
        return 1.0
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:  # NaN fails too
        raise InvalidInput(f"weight must be from {MIN_WEIGHT} to {MAX_WEIGHT:g}; got {weight}")
    return weight


def describe_tenant(tenant: Tenant) -> dict[str, Any]:
    return {
        "object": "tenant",
        "id": tenant.id,
        "name": tenant.name,
        "status": tenant.status,
        "allowed_models": tenant.allowed_models,
        "rate_limit_rps": tenant.rate_limit_rps,
        "max_concurrency": tenant.max_concurrency,
        "monthly_quota_inputs": tenant.monthly_quota_inputs,
        "weight": tenant.weight,
        "created_at": tenant.created_at.isoformat(),
    }


def describe_key(key: ApiKey, tenant: str) -> dict[str, Any]:
    """A key as lists show it: never its secret, never its hash."""
    return {
        "object": "api_key",
        "id": key.id,
        "tenant": tenant,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": key.scopes,
        "models": key.models,
        "rate_limit_rps": key.rate_limit_rps,
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
        "created_at": iso(key.created_at),
    }


class Tenants:
    """Tenants and keys in the database behind `sessions`."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # tenants

    def create_tenant(
        self,
        name: str,
        *,
        rate_limit_rps: float | None = None,
        max_concurrency: int | None = None,
        monthly_quota_inputs: int | None = None,
        allowed_models: list[str] | None = None,
        weight: float = 1.0,
    ) -> Tenant:
        tenant = Tenant(
            id=new_id("ten"),
            name=_check_name(name),
            status="active",
            allowed_models=sorted(set(allowed_models)) if allowed_models is not None else None,
            rate_limit_rps=rate_limit_rps,
            max_concurrency=max_concurrency,
            monthly_quota_inputs=monthly_quota_inputs,
            weight=_check_weight(weight),
            created_at=datetime.now(UTC),
        )
        try:
            with self._sessions.begin() as session:
                session.add(tenant)
        except IntegrityError:
            raise Conflict(f"tenant {name!r} exists already") from None
        return tenant

    def ensure_tenant(self, name: str) -> Tenant:
        """The tenant called `name`, created with no limits if it does not exist yet."""
        try:
            return self.get_tenant(name)
        except NotFound:
            pass
        try:
            return self.create_tenant(name)
        except Conflict:  # created meanwhile by another process
            return self.get_tenant(name)

    def get_tenant(self, name: str) -> Tenant:
        with self._sessions() as session:
            tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
        if tenant is None:
            raise NotFound(f"tenant {name!r} not found")
        return tenant

    def list_tenants(self) -> list[Tenant]:
        with self._sessions() as session:
            return list(session.scalars(select(Tenant).order_by(Tenant.name)))

    def set_status(self, name: str, status: str) -> Tenant:
        """Suspend (`suspended`) or resume (`active`) a tenant: its keys stop or start working."""
        assert status in ("active", "suspended")
        with self._sessions.begin() as session:
            tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
            if tenant is None:
                raise NotFound(f"tenant {name!r} not found")
            tenant.status = status
        return tenant

    def update_tenant(self, name: str, changes: dict[str, Any]) -> Tenant:
        """Change a tenant's limits or model list (`None` clears one); keys see it within a second."""
        allowed = {"rate_limit_rps", "max_concurrency", "monthly_quota_inputs", "allowed_models", "weight"}
        if "weight" in changes:
            changes = {**changes, "weight": _check_weight(changes["weight"])}
        assert set(changes) <= allowed, set(changes) - allowed
        with self._sessions.begin() as session:
            tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
            if tenant is None:
                raise NotFound(f"tenant {name!r} not found")
            for field, value in changes.items():
                if field == "allowed_models" and value is not None:
                    value = sorted(set(value))
                setattr(tenant, field, value)
        return tenant

    # keys

    def create_key(
        self,
        tenant: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        models: list[str] | None = None,
        expires_at: datetime | None = None,
        rate_limit_rps: float | None = None,
        key: str | None = None,
    ) -> NewKey:
        """A new key for `tenant` (`key` adopts an existing secret, e.g. the bootstrap admin key)."""
        owner = self.get_tenant(tenant)
        secret = key or generate_key()
        row = ApiKey(
            id=new_id("key"),
            tenant_id=owner.id,
            key_hash=hash_key(secret),
            prefix=display_prefix(secret),
            name=name,
            scopes=_check_scopes(scopes),
            models=sorted(set(models)) if models is not None else None,
            rate_limit_rps=rate_limit_rps,
            expires_at=expires_at,
            created_at=datetime.now(UTC),
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict("that key exists already") from None
        return NewKey(row, owner.name, secret)

    def has_key(self, key: str) -> bool:
        with self._sessions() as session:
            found = session.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))).first()
        return found is not None

    def list_keys(self, tenant: str) -> list[ApiKey]:
        owner = self.get_tenant(tenant)
        with self._sessions() as session:
            query = select(ApiKey).where(ApiKey.tenant_id == owner.id).order_by(ApiKey.created_at)
            return list(session.scalars(query))

    def get_key(self, key_id_or_key: str) -> tuple[ApiKey, str]:
        """A key by its id (`key_…`) or by the key itself (`mk_…`), with its tenant's name."""
        if key_id_or_key.startswith(KEY_PREFIX):
            where = ApiKey.key_hash == hash_key(key_id_or_key)
        else:
            where = ApiKey.id == key_id_or_key
        with self._sessions() as session:
            row = session.execute(select(ApiKey, Tenant.name).join(Tenant).where(where)).first()
        if row is None:
            # never echo what was given: it may be a key
            raise NotFound("no such key")
        return row[0], row[1]

    def revoke_key(self, key_id_or_key: str) -> tuple[ApiKey, str]:
        """Revoke a key now; revoking it again keeps the first revocation time."""
        key, tenant = self.get_key(key_id_or_key)
        with self._sessions.begin() as session:
            row = session.get_one(ApiKey, key.id)
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
        return row, tenant

    def rotate_key(self, key_id: str, *, grace_seconds: float = 0) -> tuple[NewKey, ApiKey]:
        """A new key with the old one's tenant, name, scopes, models and limits; the old key keeps
        working for `grace_seconds` more (at most until its own expiry), then stops."""
        old, tenant = self.get_key(key_id)
        if old.revoked_at is not None:
            raise Conflict(f"key {old.id} is revoked; create a new key instead")
        if old.expires_at is not None and old.expires_at <= datetime.now(UTC):
            # its replacement would copy an expiry in the past (as after an earlier rotation)
            raise Conflict(f"key {old.id} has expired; rotate its replacement or create a new key")
        fresh = self.create_key(
            tenant,
            name=old.name,
            scopes=old.scopes,
            models=old.models,
            expires_at=old.expires_at,
            rate_limit_rps=old.rate_limit_rps,
        )
        ends = datetime.now(UTC) + timedelta(seconds=grace_seconds)
        with self._sessions.begin() as session:
            row = session.get_one(ApiKey, old.id)
            if row.expires_at is None or row.expires_at > ends:
                row.expires_at = ends
        return fresh, row
