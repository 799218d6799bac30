"""API keys: `mk_` + 256 random bits; only their SHA-256 hash is kept, in the database and in
memory. A key is never logged, never put in an error message or a metric label."""

from __future__ import annotations

import hashlib
import secrets

from service.redaction import KEY_PREFIX

SCOPES = frozenset({"inference", "fine_tune", "admin"})


def generate_key() -> str:
    """A new API key: `mk_` + 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
