"""What the API tests of files and jobs (fine-tuning, batches) share: a tenant with a key, an
upload, and a job polled until it reaches a status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

DEADLINE_S = 120


async def tenant_key(admin: httpx.AsyncClient, name: str) -> str:
    """A new tenant `name` and a key of its own, made with the `admin` client."""
    assert (await admin.post("/v1/admin/tenants", json={"name": name})).status_code == 201
    made = await admin.post(f"/v1/admin/tenants/{name}/keys", json={})
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


async def upload_file(
    http: httpx.AsyncClient, name: str, data: bytes, purpose: str, content_type: str | None = None
) -> httpx.Response:
    """POST /v1/files with `data` as the file `name` (its type guessed from the name unless given)."""
    part = (name, data) if content_type is None else (name, data, content_type)
    return await http.post("/v1/files", files={"file": part}, data={"purpose": purpose})


async def wait_for_status(http: httpx.AsyncClient, path: str, statuses: set[str]) -> dict[str, Any]:
    """Poll the job at `path` until its status is one of `statuses` (fails at the deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await http.get(path)).json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)  # a poll interval, not a timing assumption
    raise AssertionError(f"{path} never reached {statuses}: {job}")
