"""The database key store: lookups by hash, a cache that never outlives one second, suspension,
expiry, model allow-lists, last-used times written lazily. Time is an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.errors import NotFound, PermissionDenied
from service.tenancy.keys import generate_key
from service.tenancy.keystore import NOT_CACHED, AdminKeyStore, DatabaseKeyStore
from service.tenancy.principal import Principal
from service.tenancy.tenants import Tenants


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tenants(sessions: sessionmaker[Session]) -> Tenants:
    tenants = Tenants(sessions)
    tenants.create_tenant("acme", rate_limit_rps=4, max_concurrency=2, monthly_quota_inputs=9)
    return tenants


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(sessions: sessionmaker[Session], clock: Clock) -> DatabaseKeyStore:
    return DatabaseKeyStore(sessions, clock=clock)


def test_a_key_becomes_its_principal(tenants: Tenants, store: DatabaseKeyStore) -> None:
    made = tenants.create_key("acme", scopes=["inference"], rate_limit_rps=2)
    caller = store.verify(made.key)
    assert caller is not None
    acme = tenants.get_tenant("acme")
    assert (caller.key_id, caller.tenant, caller.tenant_id) == (made.row.id, "acme", acme.id)
    assert caller.scopes == {"inference"} and caller.models is None and not caller.is_admin
    assert (caller.rate_limit_rps, caller.tenant_rate_limit_rps) == (2, 4)
    assert (caller.max_concurrency, caller.monthly_quota_inputs) == (2, 9)
    assert store.verify(generate_key()) is None
    assert store.verify(made.key[:-1]) is None


def test_revocation_through_another_store_holds_within_one_second(
    tenants: Tenants, store: DatabaseKeyStore, clock: Clock
) -> None:
    made = tenants.create_key("acme")
    assert store.verify(made.key) is not None
    tenants.revoke_key(made.row.id)  # as another process would: straight in the database
    clock.now += 0.999
    assert store.verify(made.key) is not None  # still cached, for under a second
    clock.now += 0.001
    assert store.verify(made.key) is None


def test_forget_makes_a_change_hold_at_once(tenants: Tenants, store: DatabaseKeyStore) -> None:
    made = tenants.create_key("acme")
    assert store.verify(made.key) is not None
    tenants.revoke_key(made.key)
    store.forget()
    assert store.verify(made.key) is None


def test_the_non_blocking_check_answers_only_what_the_cache_holds(
    tenants: Tenants, store: DatabaseKeyStore, clock: Clock, sessions: sessionmaker[Session]
) -> None:
    """The check the event loop makes (`verify_cached`) never reads the database: a key not
    looked up within the last second is NOT_CACHED (the caller then looks it up off the loop),
    and a cached revocation or suspension holds there as in `verify`."""
    made, stranger = tenants.create_key("acme"), generate_key()
    assert store.verify_cached(made.key) is NOT_CACHED
    assert store.verify_cached(stranger) is NOT_CACHED
    caller = store.verify(made.key)
    assert caller is not None and store.verify_cached(made.key) == caller
    assert store.verify(stranger) is None and store.verify_cached(stranger) is None
    clock.now += 1.0
    assert store.verify_cached(made.key) is NOT_CACHED  # stale: the database decides again
    tenants.set_status("acme", "suspended")
    store.forget()
    assert store.verify_cached(made.key) is NOT_CACHED
    with pytest.raises(PermissionDenied):
        store.verify(made.key)
    with pytest.raises(PermissionDenied):
        store.verify_cached(made.key)
    admin = AdminKeyStore("the-admin-key")
    with_admin = DatabaseKeyStore(sessions, fallback=admin, clock=clock)
    assert with_admin.verify_cached("the-admin-key") == admin.verify("the-admin-key")  # no lookup


def test_a_suspended_tenant_gets_403_and_resuming_lets_it_back(
    tenants: Tenants, store: DatabaseKeyStore, clock: Clock
) -> None:
    made = tenants.create_key("acme")
    tenants.set_status("acme", "suspended")
    with pytest.raises(PermissionDenied, match="'acme' is suspended") as caught:
        store.verify(made.key)
    assert made.key not in str(caught.value)
    tenants.set_status("acme", "active")
    clock.now += 1
    assert store.verify(made.key) is not None


def test_an_expired_key_is_refused_even_while_cached(
    tenants: Tenants, sessions: sessionmaker[Session]
) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    made = tenants.create_key("acme", expires_at=soon)
    now = [datetime.now(UTC)]
    store = DatabaseKeyStore(sessions, now=lambda: now[0])
    assert store.verify(made.key) is not None
    now[0] = soon
    assert store.verify(made.key) is None
    past = tenants.create_key("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert DatabaseKeyStore(sessions).verify(past.key) is None


def test_key_and_tenant_model_lists_intersect(tenants: Tenants, store: DatabaseKeyStore) -> None:
    tenants.create_tenant("narrow", allowed_models=["a", "b"])
    both = store.verify(tenants.create_key("narrow", models=["b", "c"]).key)
    tenant_only = store.verify(tenants.create_key("narrow").key)
    key_only = store.verify(tenants.create_key("acme", models=["c"]).key)
    assert both is not None and both.models == {"b"}
    assert tenant_only is not None and tenant_only.models == {"a", "b"}
    assert key_only is not None and key_only.models == {"c"}


def test_last_used_is_written_at_most_once_a_minute(
    tenants: Tenants, sessions: sessionmaker[Session]
) -> None:
    made = tenants.create_key("acme")
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    store = DatabaseKeyStore(sessions, ttl_s=0, now=lambda: now[0])
    store.verify(made.key)
    assert tenants.get_key(made.row.id)[0].last_used_at == now[0]
    first = now[0]
    now[0] += timedelta(seconds=59)
    store.verify(made.key)
    assert tenants.get_key(made.row.id)[0].last_used_at == first
    now[0] += timedelta(seconds=1)
    store.verify(made.key)
    assert tenants.get_key(made.row.id)[0].last_used_at == now[0]


def test_the_bootstrap_admin_key_is_checked_first(sessions: sessionmaker[Session]) -> None:
    admin = generate_key()
    store = DatabaseKeyStore(sessions, fallback=AdminKeyStore(admin, tenant_id="ten_x"))
    caller = store.verify(admin)
    assert caller is not None and caller.is_admin and caller.tenant_id == "ten_x"


def test_the_cache_cannot_be_set_to_keep_answers_longer(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="at most"):
        DatabaseKeyStore(sessions, ttl_s=5)


def test_another_tenants_private_model_is_not_found_not_forbidden() -> None:
    caller = Principal("key_1", "acme", frozenset({"inference"}), tenant_id="ten_acme")
    caller.require_model("public")
    caller.require_model("acme-tuned", owner="ten_acme")
    assert caller.may_use("acme-tuned", owner="ten_acme")
    assert not caller.may_use("globex-tuned", owner="ten_globex")
    with pytest.raises(NotFound, match="'globex-tuned' not found"):
        caller.require_model("globex-tuned", owner="ten_globex")
