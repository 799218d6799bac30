"""Metering survives SIGKILL: a real `maas serve` under concurrent load is killed mid-stream (every
process of it at once, as the OOM killer or a container runtime does: with the default
MAAS_WORKERS, the supervisor, the model process and the front-end workers); every request that
got a 200 must have exactly one usage event in the database afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from service.db.models import UsageEvent
from tests.conftest import ADMIN_KEY, image_bytes, write_tiny_vit
from tests.e2e.conftest import descendants, start_server

pytestmark = pytest.mark.e2e
WORKERS = 8
KILL_AFTER = 150  # answered requests before the kill: load is well under way, whatever the machine


def kill_every_process(pid: int) -> None:
    """SIGKILL `pid` and everything below it at once: stopped first, so that the supervisor
    neither restarts a killed worker nor lets its children drain on its death."""
    os.kill(pid, signal.SIGSTOP)
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_every_200_has_exactly_one_usage_event_after_sigkill(tmp_path: Path, tiny_vit_dir: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_vit(models, tiny_vit_dir)
    server = start_server(models, tmp_path / "var", env={"MAAS_ADMIN_KEY": ADMIN_KEY})
    answered: list[str] = []  # request ids of the 200s, as the client saw them
    lock = threading.Lock()
    enough = threading.Event()
    body = image_bytes()

    def client() -> None:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "image/png"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            while True:
                try:
                    response = http.post("/v1/models/tiny-vit/predict", content=body)
                except httpx.TransportError:
                    return  # the server is gone
                if response.status_code == 200:
                    with lock:
                        answered.append(response.headers["x-request-id"])
                        if len(answered) >= KILL_AFTER:
                            enough.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(WORKERS)]
    try:
        for thread in threads:
            thread.start()
        assert enough.wait(timeout=120), f"only {len(answered)} answers:\n{server.log()}"
        kill_every_process(server.process.pid)
        server.process.wait()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert server.process.returncode == -signal.SIGKILL

    engine = create_engine(f"sqlite:///{server.data_dir / 'maas.db'}")
    try:
        with engine.connect() as connection:
            recorded = Counter(connection.scalars(select(UsageEvent.request_id)))
    finally:
        engine.dispose()
    assert len(answered) >= KILL_AFTER and len(set(answered)) == len(answered)
    missing = [rid for rid in answered if recorded[rid] == 0]
    assert missing == [], f"{len(missing)} answered request(s) have no usage event"
    assert all(recorded[rid] == 1 for rid in answered)
    assert max(recorded.values()) == 1  # no request id recorded twice
