"""Tenants and keys in the database (SQLite and PostgreSQL): create, list, suspend, revoke, rotate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import ApiKey
from service.errors import Conflict, InvalidInput, NotFound
from service.tenancy.keys import hash_key
from service.tenancy.tenants import Tenants, describe_key


@pytest.fixture
def tenants(sessions: sessionmaker[Session]) -> Tenants:
    return Tenants(sessions)


def test_tenant_names_are_unique_and_url_safe(tenants: Tenants) -> None:
    made = tenants.create_tenant(
        "acme", rate_limit_rps=5, monthly_quota_inputs=100, allowed_models=["b", "a"]
    )
    assert made.id.startswith("ten_") and made.status == "active" and made.allowed_models == ["a", "b"]
    with pytest.raises(Conflict, match="'acme' exists"):
        tenants.create_tenant("acme")
    for bad in ("", "Acme", "a b", "-x", "x/y", "a" * 64):
        with pytest.raises(InvalidInput):
            tenants.create_tenant(bad)
    assert tenants.ensure_tenant("acme").id == made.id
    assert [t.name for t in tenants.list_tenants()] == ["acme"]


def test_suspend_and_resume(tenants: Tenants) -> None:
    tenants.create_tenant("acme")
    assert tenants.set_status("acme", "suspended").status == "suspended"
    assert tenants.get_tenant("acme").status == "suspended"
    assert tenants.set_status("acme", "active").status == "active"
    with pytest.raises(NotFound):
        tenants.set_status("nobody", "suspended")


def test_a_key_is_stored_only_as_its_hash(tenants: Tenants, sessions: sessionmaker[Session]) -> None:
    tenants.create_tenant("acme")
    made = tenants.create_key("acme", name="ci", models=["tiny-vit"])
    assert made.key.startswith("mk_") and made.row.id.startswith("key_")
    assert made.row.prefix == made.key[:11] and made.row.scopes == ["fine_tune", "inference"]
    with sessions() as session:
        row = session.scalars(select(ApiKey)).one()
    assert row.key_hash == hash_key(made.key)
    assert made.key not in str(describe_key(row, "acme")) and "key_hash" not in describe_key(row, "acme")


def test_key_scopes_are_checked(tenants: Tenants) -> None:
    tenants.create_tenant("acme")
    for scopes in ([], ["root"], ["inference", "everything"]):
        with pytest.raises(InvalidInput, match="scopes"):
            tenants.create_key("acme", scopes=scopes)
    with pytest.raises(NotFound):
        tenants.create_key("nobody")


def test_keys_are_listed_per_tenant_and_found_by_id_or_key(tenants: Tenants) -> None:
    tenants.create_tenant("acme")
    tenants.create_tenant("globex")
    a = tenants.create_key("acme")
    b = tenants.create_key("globex")
    assert [k.id for k in tenants.list_keys("acme")] == [a.row.id]
    assert [k.id for k in tenants.list_keys("globex")] == [b.row.id]
    assert tenants.get_key(a.key)[0].id == a.row.id and tenants.get_key(a.row.id)[1] == "acme"
    with pytest.raises(NotFound) as caught:
        tenants.get_key("mk_not_a_real_key")
    assert "mk_not_a_real_key" not in str(caught.value)  # a key is never echoed back


def test_revoking_keeps_the_first_time(tenants: Tenants) -> None:
    tenants.create_tenant("acme")
    made = tenants.create_key("acme")
    first, _ = tenants.revoke_key(made.key)
    again, _ = tenants.revoke_key(made.row.id)
    assert first.revoked_at is not None and again.revoked_at == first.revoked_at


def test_rotation_copies_the_key_and_ends_the_old_one_after_the_grace(tenants: Tenants) -> None:
    tenants.create_tenant("acme")
    old = tenants.create_key("acme", name="ci", scopes=["inference"], models=["m"], rate_limit_rps=3)
    before = datetime.now(UTC)
    fresh, ended = tenants.rotate_key(old.row.id, grace_seconds=60)
    assert fresh.key != old.key and fresh.row.id != old.row.id
    assert (fresh.row.name, fresh.row.scopes, fresh.row.models, fresh.row.rate_limit_rps) == (
        "ci",
        ["inference"],
        ["m"],
        3,
    )
    assert ended.expires_at is not None
    assert before + timedelta(seconds=59) < ended.expires_at <= datetime.now(UTC) + timedelta(seconds=60)
    tenants.revoke_key(old.row.id)
    with pytest.raises(Conflict, match="revoked"):
        tenants.rotate_key(old.row.id)


def test_a_key_ended_by_an_earlier_rotation_cannot_be_rotated_again(tenants: Tenants) -> None:
    tenants.create_tenant("acme")
    old = tenants.create_key("acme")
    fresh, _ = tenants.rotate_key(old.row.id)  # no grace: the old key ends now
    with pytest.raises(Conflict, match="expired"):
        tenants.rotate_key(old.row.id)
    newer, _ = tenants.rotate_key(fresh.row.id)
    assert newer.row.expires_at is None
