"""Monthly quotas in inputs: counted per tenant and calendar month (UTC), refused with a clear 429;
a count read within the second lets requests in without a read only far from the quota's end."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.errors import RateLimited
from service.tenancy.principal import Principal
from service.tenancy.quota import FRESH_S, MARGIN_MIN, Quota, month_of, next_month
from service.tenancy.tenants import Tenants


def test_months_roll_over_in_utc() -> None:
    assert month_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
    assert next_month(datetime(2026, 12, 31, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month(datetime(2026, 2, 3, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


def test_charges_add_up_per_tenant_and_month_and_the_quota_refuses_when_spent(
    sessions: sessionmaker[Session],
) -> None:
    tenants = Tenants(sessions)
    acme = tenants.create_tenant("acme", monthly_quota_inputs=5)
    other = tenants.create_tenant("globex")
    now = [datetime(2026, 11, 27, 8, tzinfo=UTC)]
    quota = Quota(sessions, now=lambda: now[0])
    caller = Principal("key_1", "acme", frozenset(), tenant_id=acme.id, monthly_quota_inputs=5)

    quota.check(caller)
    quota.charge(acme.id, 3)
    quota.charge(other.id, 100)
    quota.check(caller)
    quota.charge(acme.id, 2)
    assert quota.used(acme.id) == 5 and quota.used(other.id) == 100
    with pytest.raises(RateLimited) as caught:
        quota.check(caller)
    assert caught.value.message == "monthly quota of 5 inputs spent; resets on 2026-12-01"
    retry = int(caught.value.headers["Retry-After"])
    assert retry == int((datetime(2026, 12, 1, tzinfo=UTC) - now[0]).total_seconds()) + 1

    now[0] = datetime(2026, 12, 1, tzinfo=UTC)  # a new month starts from zero
    quota.check(caller)
    assert quota.used(acme.id) == 0 and quota.used(acme.id, "2026-11") == 5


def test_no_quota_means_no_check(sessions: sessionmaker[Session]) -> None:
    Quota(sessions).check(Principal("key_1", "acme", frozenset(), tenant_id="ten_x"))


def test_a_fresh_count_far_from_the_end_spares_the_read_and_near_it_every_check_reads(
    sessions: sessionmaker[Session],
) -> None:
    tenants = Tenants(sessions)
    big = tenants.create_tenant("big", monthly_quota_inputs=100_000)
    small = tenants.create_tenant("small", monthly_quota_inputs=MARGIN_MIN)
    clock = [0.0]
    quota = Quota(sessions, clock=lambda: clock[0])
    caller = Principal("key_1", "big", frozenset(), tenant_id=big.id, monthly_quota_inputs=100_000)
    assert not quota.well_under(caller)  # never read: read it
    quota.check(caller)
    assert quota.well_under(caller)  # 0 of 100,000, read just now
    clock[0] += FRESH_S
    assert not quota.well_under(caller)  # a second old: read again
    quota.charge(big.id, 89_999)
    quota.check(caller)
    assert quota.well_under(caller)  # 10,001 left: more than the tenth
    quota.charge(big.id, 1)
    quota.check(caller)
    assert not quota.well_under(caller)  # the last tenth: every check reads
    quota.charge(big.id, 10_000)
    with pytest.raises(RateLimited):
        quota.check(caller)  # the refusal comes from the read
    assert not quota.well_under(caller)

    tiny = Principal("key_2", "small", frozenset(), tenant_id=small.id, monthly_quota_inputs=MARGIN_MIN)
    quota.check(tiny)
    assert not quota.well_under(tiny)  # a quota within the margin: read every time, exact
