"""Retries against real gateways: a tenant's rate limit (429 with Retry-After), a spent monthly
quota (429 with a Retry-After of weeks), a full queue (503 `overloaded` with Retry-After), and an
answer lost on the way back (the retry replays the first answer and is billed once)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_KEY, PRICE_MICRO, DroppingProxy, RecordingSleep, png, unique
from maas_client import APIConnectionError, Client, OverloadedError, RateLimitError

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def admin(gateway: Server) -> Iterator[Client]:
    with Client(gateway.base_url, ADMIN_KEY) as client:
        yield client


def tenant_key(admin: Client, prefix: str, **limits: Any) -> tuple[str, str]:
    """A new tenant with these limits, and a key of it: (tenant name, secret)."""
    name = unique(prefix)
    admin.admin.tenants.create(name, **limits)
    secret = admin.admin.keys.create(name).key
    assert secret is not None
    return name, secret


def test_a_rate_limited_call_waits_retry_after_then_succeeds(gateway: Server, admin: Client) -> None:
    # 0.5 request/s with a burst of 1: the second call, made at once, is refused for about 2 s
    tenant, key = tenant_key(admin, "rated", rate_limit_rps=0.5)
    sleep = RecordingSleep()
    with Client(gateway.base_url, key, sleep=sleep) as client:
        first = client.predict("tiny-vit", png())
        second = client.predict("tiny-vit", png((0, 0, 200)))
    assert first.usage.inputs == second.usage.inputs == 1
    assert len(sleep.waits) == 1 and sleep.waits[0] in (1.0, 2.0)  # the gateway's whole seconds
    report = admin.admin.usage.get(tenant=tenant)
    assert report.data[0].inputs == 2 and report.total_cost_micro == 2 * PRICE_MICRO


def test_a_rate_limit_error_carries_retry_after_when_retries_are_off(gateway: Server, admin: Client) -> None:
    _, key = tenant_key(admin, "rated", rate_limit_rps=0.5)
    with Client(gateway.base_url, key, max_retries=0) as client:
        client.predict("tiny-vit", png())
        with pytest.raises(RateLimitError) as caught:
            client.predict("tiny-vit", png())
    error = caught.value
    assert error.status_code == 429 and error.type == "rate_limited" and error.retry_after in (1.0, 2.0)
    assert error.request_id and error.request_id.startswith("req_")


def test_a_spent_monthly_quota_raises_at_once_with_its_retry_after(gateway: Server, admin: Client) -> None:
    _, key = tenant_key(admin, "quota", monthly_quota_inputs=1)
    sleeps: list[float] = []
    with Client(gateway.base_url, key, sleep=sleeps.append) as client:
        client.predict("tiny-vit", png())
        with pytest.raises(RateLimitError) as caught:
            client.predict("tiny-vit", png())
    assert caught.value.retry_after is not None and caught.value.retry_after > 3600  # next month
    assert "quota" in caught.value.message and sleeps == []  # no retry can succeed before then


def test_a_lost_answer_is_retried_with_the_same_key_and_billed_once(gateway: Server, admin: Client) -> None:
    tenant, key = tenant_key(admin, "lost")
    sleeps: list[float] = []
    with (
        DroppingProxy(gateway.base_url, drop=1) as proxy,
        Client(proxy.base_url, key, sleep=sleeps.append) as client,
    ):
        result = client.predict("tiny-vit", [png(), png((0, 200, 0))])
    assert len(result.predictions) == 2 and len(sleeps) == 1
    first, second = proxy.forwarded
    assert proxy.answers == [200, 200]  # the gateway answered both: the second from its record
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.body == second.body  # a multipart body is built once: same bytes, same request
    (row,) = admin.admin.usage.get(tenant=tenant).data
    assert row.requests == 1 and row.inputs == 2 and row.cost_micro == 2 * PRICE_MICRO


def test_a_lost_answer_to_a_call_that_is_not_replay_safe_is_not_sent_again(
    gateway: Server, admin: Client
) -> None:
    # a second POST /keys would make a second key: the client raises instead of guessing
    tenant = unique("keys")
    admin.admin.tenants.create(tenant)
    with (
        DroppingProxy(gateway.base_url, drop=1) as proxy,
        Client(proxy.base_url, ADMIN_KEY, sleep=lambda s: None) as client,
    ):
        with pytest.raises(APIConnectionError):
            client.admin.keys.create(tenant, name="once")
        assert len(proxy.forwarded) == 1
    assert [k.name for k in admin.admin.keys.list(tenant)] == ["once"]


class Gate:
    """Holds every forward pass of the gateway's model until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()


@pytest.fixture
def held_gateway(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Gate]]:
    """A real gateway served over HTTP by uvicorn in a thread, whose one model (queue of 1 input)
    is held on a gate: what is queued when is decided by the test, not by timing."""
    import uvicorn

    from service.app import create_app
    from service.serving.runtime.transformers_adapter import ImageClassificationAdapter
    from service.settings import Settings
    from tests.conftest import write_manifest
    from tests.e2e.conftest import free_port

    gate = Gate()
    gate.open.set()  # open while the model loads and warms up
    predict = ImageClassificationAdapter.predict

    def held_predict(self: ImageClassificationAdapter, features: list[Any], *, top_k: int) -> Any:
        gate.entered.set()
        gate.open.wait(timeout=60)
        return predict(self, features, top_k=top_k)

    monkeypatch.setattr(ImageClassificationAdapter, "predict", held_predict)
    models = tmp_path / "models"
    models.mkdir()
    write_manifest(
        models,
        "held",
        f"name: held\ntask: image-classification\nsource: {tiny_vit_dir}\n"
        "batching: {max_batch_size: 1, max_delay_ms: 1, max_queue: 1}\n",
    )
    settings = Settings(models_dir=models, data_dir=tmp_path / "var", admin_key=ADMIN_KEY, devices="cpu")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    with Client(base_url, ADMIN_KEY, max_retries=0) as probe:
        while not (server.started and probe.ready()):  # polling for readiness, not for timing
            time.sleep(0.05)
    gate.open.clear()
    gate.entered.clear()
    yield base_url, gate
    gate.open.set()
    server.should_exit = True
    thread.join(timeout=60)


def test_a_full_queue_answers_503_with_retry_after_and_the_retry_succeeds(
    held_gateway: tuple[str, Gate],
) -> None:
    base_url, gate = held_gateway
    with Client(base_url, ADMIN_KEY) as admin:
        admin.admin.tenants.create("busy")
        key = admin.admin.keys.create("busy").key
    assert key is not None
    first: list[Any] = []

    def hold() -> None:
        with Client(base_url, key) as client:
            first.append(client.predict("held", png()))

    holder = threading.Thread(target=hold)
    holder.start()
    assert gate.entered.wait(timeout=60)  # the first input is on the model: the queue is full
    waits: list[float] = []

    def release(seconds: float) -> None:
        # instead of waiting Retry-After seconds, let the first request finish: the queue frees up
        waits.append(seconds)
        gate.open.set()
        holder.join(timeout=60)

    with Client(base_url, key, sleep=release) as client:
        second = client.predict("held", png((0, 0, 200)))
    assert waits == [1.0] and second.usage.inputs == 1 and first[0].usage.inputs == 1
    with Client(base_url, ADMIN_KEY) as admin:
        (row,) = admin.admin.usage.get(tenant="busy").data
    assert row.requests == 3 and row.errors == 1 and row.inputs == 2  # the 503 is recorded, not billed


def test_a_full_queue_raises_overloaded_when_retries_are_off(held_gateway: tuple[str, Gate]) -> None:
    base_url, gate = held_gateway

    def hold() -> None:
        with Client(base_url, ADMIN_KEY) as client:
            client.predict("held", png())

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert gate.entered.wait(timeout=60)
        with Client(base_url, ADMIN_KEY, max_retries=0) as client, pytest.raises(OverloadedError) as caught:
            client.predict("held", png())
        assert caught.value.status_code == 503 and caught.value.retry_after == 1
    finally:
        gate.open.set()
        holder.join(timeout=60)
