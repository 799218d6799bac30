"""Property-based fuzzing of every operation in /openapi.json (schemathesis over hypothesis),
against a real `maas serve` process, with a tenant's key and with the admin key, on SQLite and on
PostgreSQL: no input, valid or not, may be answered with a 5xx, and every answer is one the
schema declares (its status, its content type, its body's schema).

Bounded: at most MAX_EXAMPLES cases per operation and key, derandomized (the same cases each
run, so a failure reproduces), no example database. No operation is skipped: a fine-tuning job
needs a stored dataset file, which random bytes never make, so no long job can start."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import fresh_postgres_database, postgres_url_or_skip, write_tiny_vit
from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e

ADMIN = "mk_e2e_fuzz_admin_key_00000000000000000000"
MODEL = "tiny-vit"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 20  # per operation, key and database: about a minute per database on 2 cores


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzzed_server(request: pytest.FixtureRequest, tmp_path: Path, tiny_vit_dir: Path) -> Iterator[Server]:
    """A gateway with the tiny ViT, on an SQLite file or a fresh PostgreSQL database."""
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_vit(models, tiny_vit_dir, price="{per_image: 0.001}", batching=None)
    env = {"MAAS_ADMIN_KEY": ADMIN}
    if request.param == "sqlite":
        server = start_server(models, tmp_path / "var", env=env)
        yield server
        server.stop()
        return
    with fresh_postgres_database(postgres_url_or_skip()) as url:
        server = start_server(models, tmp_path / "var", env={**env, "MAAS_DATABASE_URL": url})
        yield server
        server.stop()


def fuzz(server: Server, key: str) -> tuple[Counter[int], list[str]]:
    """Each operation fuzzed with `key`, positive and negative cases: the statuses answered, and
    the failures, described."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        strategies = [operation.as_strategy(mode) for mode in modes]
        if "{model}" in operation.path:  # a real model too, or inference is never reached
            pinned = {"model": MODEL}
            strategies += [operation.as_strategy(mode, path_parameters=pinned) for mode in modes]
        cases = st.one_of(strategies)

        @given(case=cases)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing case is reported as is
            suppress_health_check=list(HealthCheck),
        )
        def one(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
            response = case.call(base_url=server.base_url, session=session, timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            one()
        except Exception as exc:  # every operation runs; all failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return statuses, failures


def test_no_input_gets_a_5xx_with_a_tenant_key_or_the_admin_key(fuzzed_server: Server) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    url = fuzzed_server.base_url
    requests.post(
        f"{url}/v1/admin/tenants", json={"name": "acme"}, headers=admin, timeout=30
    ).raise_for_status()
    made = requests.post(f"{url}/v1/admin/tenants/acme/keys", json={}, headers=admin, timeout=30)
    made.raise_for_status()
    # the tenant first: the admin's run could suspend or limit its tenant
    tenant_statuses, tenant_failures = fuzz(fuzzed_server, made.json()["key"])
    admin_statuses, admin_failures = fuzz(fuzzed_server, ADMIN)
    failures = tenant_failures + admin_failures
    assert not failures, "\n\n".join(failures) + "\n\n" + fuzzed_server.log()[-5000:]
    print("tenant key:", dict(tenant_statuses), "admin key:", dict(admin_statuses))
    for statuses in (tenant_statuses, admin_statuses):  # the fuzzing reached the routes, not only the guard
        assert statuses[200] > 0 and statuses[422] > 0 and statuses[404] > 0, statuses
        assert sum(statuses.values()) >= MAX_EXAMPLES * 10, statuses
