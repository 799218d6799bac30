"""`maas db|tenants|keys …` as a user runs them: real subprocesses on a real database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db import create_db_engine, session_factory
from service.tenancy.keychanges import KeyChanges
from service.tenancy.keystore import DatabaseKeyStore
from tests.conftest import redis_url_or_skip


def maas(
    *args: str, database_url: str, cwd: Path, check: bool = True, redis_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env["MAAS_DATABASE_URL"] = database_url
    if redis_url:
        env["MAAS_REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def key_store(database_url: str) -> Iterator[DatabaseKeyStore]:
    """What a gateway sees, with no cache: every change the CLI makes shows at once."""
    engine = create_db_engine(database_url)
    sessions: sessionmaker[Session] = session_factory(engine)
    yield DatabaseKeyStore(sessions, ttl_s=0)
    engine.dispose()


def test_keys_create_makes_the_tenant_and_prints_the_key_alone_on_the_last_line(
    database_url: str, tmp_path: Path, key_store: DatabaseKeyStore
) -> None:
    made = maas("keys", "create", "--tenant", "acme", "--admin", "--models", "a,b", "--name", "ops",
                database_url=database_url, cwd=tmp_path)  # fmt: skip
    key = made.stdout.splitlines()[-1]
    assert key.startswith("mk_") and key.strip() == key and len(key) > 40
    caller = key_store.verify(key)
    assert caller is not None and caller.tenant == "acme" and caller.is_admin and caller.models == {"a", "b"}

    listed = maas("keys", "list", "--tenant", "acme", database_url=database_url, cwd=tmp_path).stdout
    assert "ops" in listed and key[:11] in listed and key not in listed

    plain = maas("keys", "create", "--tenant", "acme", database_url=database_url, cwd=tmp_path)
    plain_key = plain.stdout.splitlines()[-1]
    plain_caller = key_store.verify(plain_key)
    assert plain_caller is not None and plain_caller.scopes == {"inference", "fine_tune"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the store itself runs on both
def test_tenants_create_list_suspend_and_keys_revoke_by_key_or_id(
    database_url: str, tmp_path: Path, key_store: DatabaseKeyStore
) -> None:
    maas("tenants", "create", "acme", "--rps", "2", "--concurrency", "3", "--quota", "100",
         database_url=database_url, cwd=tmp_path)  # fmt: skip
    again = maas("tenants", "create", "acme", database_url=database_url, cwd=tmp_path, check=False)
    assert again.returncode == 1 and "exists already" in again.stderr
    [_, row] = maas("tenants", "list", database_url=database_url, cwd=tmp_path).stdout.splitlines()
    assert row.split() == ["acme", "active", "1.0", "2.0", "3", "100", "-"]

    first = maas("keys", "create", "--tenant", "acme", database_url=database_url, cwd=tmp_path)
    second = maas("keys", "create", "--tenant", "acme", database_url=database_url, cwd=tmp_path)
    key, other = first.stdout.splitlines()[-1], second.stdout.splitlines()[-1]
    maas("tenants", "suspend", "acme", database_url=database_url, cwd=tmp_path)
    with pytest.raises(Exception, match="suspended"):
        key_store.verify(key)
    maas("tenants", "resume", "acme", database_url=database_url, cwd=tmp_path)

    revoked = maas("keys", "revoke", key, database_url=database_url, cwd=tmp_path)
    assert key not in revoked.stdout and key_store.verify(key) is None
    other_caller = key_store.verify(other)
    assert other_caller is not None
    maas("keys", "revoke", other_caller.key_id, database_url=database_url, cwd=tmp_path)
    assert key_store.verify(other) is None
    missing = maas("keys", "revoke", "mk_nope", database_url=database_url, cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "mk_nope" not in missing.stderr


def test_db_upgrade_on_the_default_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    done = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade", "--data-dir", "state"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert "up to date" in done.stdout and (tmp_path / "state" / "maas.db").exists()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_with_redis_a_revocation_from_the_shell_holds_in_running_gateways_at_once(
    database_url: str, tmp_path: Path
) -> None:
    redis_url = redis_url_or_skip()
    engine = create_db_engine(database_url)
    gateway = DatabaseKeyStore(session_factory(engine), clock=lambda: 0.0)  # its cache never expires
    listening = KeyChanges(redis_url)
    try:
        await listening.start(gateway.forget)
        assert listening.subscribed
        made = maas("keys", "create", "--tenant", "acme", database_url=database_url, cwd=tmp_path)
        key = made.stdout.splitlines()[-1]
        assert gateway.verify(key) is not None  # cached, for good
        maas("keys", "revoke", key, database_url=database_url, cwd=tmp_path, redis_url=redis_url)
        deadline = time.monotonic() + 1.0
        while gateway.verify(key) is not None:
            assert time.monotonic() < deadline, "the shell's revocation never reached the gateway"
            await asyncio.sleep(0.001)  # lets the listener run; a poll interval
    finally:
        await listening.close()
        engine.dispose()


def test_tenants_create_and_update_set_the_weight_a_key_carries(
    database_url: str, tmp_path: Path, key_store: DatabaseKeyStore
) -> None:
    maas("tenants", "create", "bigco", "--weight", "3", database_url=database_url, cwd=tmp_path)
    key = maas("keys", "create", "--tenant", "bigco", database_url=database_url, cwd=tmp_path).stdout
    principal = key_store.verify(key.strip().splitlines()[-1])
    assert principal is not None and principal.weight == 3.0
    updated = maas("tenants", "update", "bigco", "--weight", "0.5", database_url=database_url, cwd=tmp_path)
    assert "weight 0.5" in updated.stdout
    principal = key_store.verify(key.strip().splitlines()[-1])
    assert principal is not None and principal.weight == 0.5
    header, row = maas("tenants", "list", database_url=database_url, cwd=tmp_path).stdout.splitlines()
    assert dict(zip(header.split(), row.split(), strict=False))["weight"] == "0.5"
    refused = maas(
        "tenants", "update", "bigco", "--weight", "5000", database_url=database_url, cwd=tmp_path, check=False
    )
    assert refused.returncode == 1 and "weight must be from 0.01 to 1000" in refused.stderr
