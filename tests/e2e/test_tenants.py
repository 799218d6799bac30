"""End to end with real processes: revocation across processes sharing PostgreSQL, one rate limit
shared by two gateways through Redis, and no plaintext key left in the database file or the logs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    fresh_postgres_database,
    image_bytes,
    postgres_url_or_skip,
    redis_url_or_skip,
    write_tiny_vit,
)
from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e

ADMIN = "mk_e2e_tenants_admin_key_000000000000000"
PNG = {"content": image_bytes(), "headers": {"Content-Type": "image/png"}}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("tenant-models")
    write_tiny_vit(folder, tiny_vit_dir, price=None, batching=None)
    return folder


def maas(*args: str, database_url: str, cwd: Path) -> str:
    """Run `maas …` as a separate process (a second "replica" of the control plane); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env["MAAS_DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def postgres_database() -> Iterator[str]:
    with fresh_postgres_database(postgres_url_or_skip()) as url:
        yield url


@pytest.mark.postgres
def test_a_key_revoked_by_another_process_is_refused_within_one_second(
    tiny_models: Path, tmp_path: Path, postgres_database: str
) -> None:
    server = start_server(
        tiny_models, tmp_path / "var", env={"MAAS_DATABASE_URL": postgres_database, "MAAS_ADMIN_KEY": ADMIN}
    )
    try:
        key = maas("keys", "create", "--tenant", "acme", database_url=postgres_database, cwd=tmp_path)
        key = key.splitlines()[-1]
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
            assert http.get("/v1/models").status_code == 200  # the gateway now caches this key
            maas("keys", "revoke", key, database_url=postgres_database, cwd=tmp_path)
            revoked_at = time.monotonic()
            # whatever the cache held, every request that starts a second after the revocation fails
            statuses = []
            while time.monotonic() < revoked_at + 1.0:
                statuses.append(http.get("/v1/models").status_code)
            assert set(statuses) <= {200, 401}
            assert http.get("/v1/models").status_code == 401
    finally:
        server.stop()
    assert key not in server.log()


@pytest.mark.redis
def test_two_gateways_sharing_redis_enforce_one_limit(tiny_models: Path, tmp_path: Path) -> None:
    redis_url = redis_url_or_skip()
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    maas("db", "upgrade", database_url=database_url, cwd=tmp_path)
    # burst 2 (0.1 rps x 20), refilling one token every 10 s: the test sees the burst and little more
    maas("tenants", "create", "acme", "--rps", "0.1", database_url=database_url, cwd=tmp_path)
    key = maas("keys", "create", "--tenant", "acme", database_url=database_url, cwd=tmp_path).splitlines()[-1]
    env = {
        "MAAS_DATABASE_URL": database_url,
        "MAAS_ADMIN_KEY": ADMIN,
        "MAAS_REDIS_URL": redis_url,
        "MAAS_RATE_LIMIT_BURST_FACTOR": "20",
    }
    servers = [start_server(tiny_models, tmp_path / f"var{i}", env=env) for i in range(2)]
    try:
        headers = {"Authorization": f"Bearer {key}"}
        started = time.monotonic()
        url = [f"{server.base_url}/v1/models/tiny-vit/predict" for server in servers]
        answers = [
            httpx.post(url[i % 2], headers=headers | PNG["headers"], content=PNG["content"], timeout=30)
            for i in range(6)
        ]
        elapsed = time.monotonic() - started
    finally:
        for server in servers:
            server.stop()
    statuses = [a.status_code for a in answers]
    allowance = 2 + int(elapsed * 0.1)
    assert statuses.count(200) == allowance, (statuses, elapsed)
    assert statuses.count(429) == 6 - allowance
    for refused in (a for a in answers if a.status_code == 429):
        assert int(refused.headers["retry-after"]) >= 1 and refused.headers["ratelimit-remaining"] == "0"
    assert statuses[0] == statuses[1] == 200  # each process admitted one: they drew from one bucket


def test_no_plaintext_key_in_the_database_file_or_the_logs(tiny_models: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    server = start_server(tiny_models, data_dir, env={"MAAS_ADMIN_KEY": ADMIN})
    database_url = f"sqlite:///{data_dir / 'maas.db'}"
    keys = []
    try:
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
            assert admin.post("/v1/admin/tenants", json={"name": "acme"}).status_code == 201
            made = admin.post("/v1/admin/tenants/acme/keys", json={"name": "api"}).json()
            keys.append(made["key"])
            rotated = admin.post(f"/v1/admin/keys/{made['id']}/rotate").json()
            keys.append(rotated["key"])
            # a key pasted where its id belongs: refused, and redacted from the access log
            assert admin.delete(f"/v1/admin/keys/{rotated['key']}").status_code == 400
        made_by_cli = maas("keys", "create", "--tenant", "acme", database_url=database_url, cwd=tmp_path)
        keys.append(made_by_cli.splitlines()[-1])
        for key in keys:  # used, refused, and revoked: every path a key takes through the gateway
            auth = {"Authorization": f"Bearer {key}"}
            httpx.post(f"{server.base_url}/v1/models/tiny-vit/predict", headers=auth | PNG["headers"],
                       content=PNG["content"], timeout=30)  # fmt: skip
            httpx.get(f"{server.base_url}/v1/admin/tenants", headers=auth)
        maas("keys", "revoke", keys[-1], database_url=database_url, cwd=tmp_path)
        httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {keys[-1]}"})
    finally:
        server.stop()
    stored = b"".join(p.read_bytes() for p in data_dir.glob("maas.db*"))
    log = server.log()
    for key in [*keys, ADMIN]:
        assert key.encode() not in stored and key not in log
        assert key[3:].encode() not in stored  # not even without its prefix
    assert hashlib.sha256(keys[0].encode()).hexdigest().encode() in stored  # the hash is what is kept
    assert "/v1/admin/keys/mk_[redacted]" in log  # the access log line is there, without the key
