"""API keys: generate, hash, verify in constant time, and the caller (`Principal`) they identify.

Until tenants and keys live in the database, the admin key is the only key: `MAAS_ADMIN_KEY`
if set, else one generated at first start and kept in `<data_dir>/admin.key` (mode 0600).
A key is never logged; only its SHA-256 is kept in memory for comparison.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.requests import Request

from service.errors import AuthenticationFailed, PermissionDenied

KEY_PREFIX = "mk_"
SCOPES = frozenset({"inference", "fine_tune", "admin"})


def generate_key() -> str:
    """A new API key: `mk_` + 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: their key, tenant, scopes, and (optionally) the models the key is limited to."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes and not self.is_admin:
            raise PermissionDenied(f"this key lacks the {scope!r} scope")

    def require_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise PermissionDenied(f"this key is not allowed to use model {model!r}")


class KeyStore(Protocol):
    """Anything that maps a presented key to a Principal (the database-backed store slots in here)."""

    def verify(self, key: str) -> Principal | None: ...


class AdminKeyStore:
    """Accepts exactly the bootstrap admin key."""

    def __init__(self, admin_key: str) -> None:
        self._digest = hash_key(admin_key)
        self._principal = Principal(key_id="key_admin", tenant="default", scopes=SCOPES)

    def verify(self, key: str) -> Principal | None:
        if secrets.compare_digest(hash_key(key), self._digest):
            return self._principal
        return None


@dataclass(frozen=True)
class AdminKey:
    key: str
    path: Path | None  # where it is kept, when generated
    generated: bool  # True only on the start that created it: print it then, once


def bootstrap_admin_key(configured: str | None, data_dir: Path) -> AdminKey:
    """The configured admin key, else the one kept in `data_dir/admin.key`, else a new one."""
    if configured:
        return AdminKey(configured, None, generated=False)
    path = data_dir / "admin.key"
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return AdminKey(key, path, generated=False)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return AdminKey(key, path, generated=True)


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
    return principal
