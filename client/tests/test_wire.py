"""What the real gateway cannot show on demand, against a real HTTP server that answers from a
script: `fine_tunes.wait` giving up, its polling when nobody listens, and answers from a newer
(or older) gateway whose fields this client does not know (or misses)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import Reply, ScriptServer
from maas_client import AsyncClient, Client, FineTuneProgress, FineTuneUsage


def test_fine_tunes_wait_gives_up_after_its_timeout(script_server: ScriptServer) -> None:
    script_server.on("GET", "/v1/fine-tunes/ft_1", Reply(200, {"id": "ft_1", "status": "running"}))
    with Client(script_server.base_url, "k", sleep=lambda s: None) as client, pytest.raises(TimeoutError):
        client.fine_tunes.wait("ft_1", poll_interval=1, timeout=0)


@pytest.mark.anyio
async def test_wait_sleeps_its_poll_interval_and_asks_for_no_events_without_a_listener(
    script_server: ScriptServer,
) -> None:
    base = {"id": "ft_1"}
    script_server.on(
        "GET",
        "/v1/fine-tunes/ft_1",
        Reply(200, {**base, "status": "queued"}),
        Reply(200, {**base, "status": "running"}),
        Reply(200, {**base, "status": "succeeded", "fine_tuned_model": "tiny-vit:x"}),
    )
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(script_server.base_url, "k", sleep=record) as client:
        job = await client.fine_tunes.wait("ft_1", poll_interval=2)
    assert job.done and job.fine_tuned_model == "tiny-vit:x" and sleeps == [2, 2]
    assert not script_server.attempts("GET", "/v1/fine-tunes/ft_1/events")


def test_fields_a_newer_gateway_adds_are_kept_in_raw_and_missing_ones_read_as_defaults(
    script_server: ScriptServer,
) -> None:
    job = {
        "id": "ft_1",
        "status": "paused",  # a status this client does not know: kept as is
        "priority": 3,
        "progress": {"steps_done": 4, "steps_total": 8, "tokens": 99},
        "usage": {"device_seconds": 1.5, "trained_samples": 40, "energy_j": 7},
        "error": {"code": "oom", "message": "out of memory"},
    }
    script_server.on("GET", "/v1/fine-tunes/ft_1", Reply(200, job))
    script_server.on("GET", "/v1/models/m", Reply(200, {"id": "m", "quantized": True}))
    script_server.on(
        "GET",
        "/v1/usage",
        Reply(200, {"data": [{"model": "m", "inputs": 2, "cost": "0.5", "region": "eu"}], "extra": 1}),
    )
    with Client(script_server.base_url, "k") as client:
        got = client.fine_tunes.get("ft_1")
        model = client.models.get("m")
        report = client.usage.get()
    assert got.status == "paused" and not got.done and got.raw["priority"] == 3
    assert got.progress == FineTuneProgress(steps_done=4, steps_total=8) and got.progress.fraction == 0.5
    assert got.usage == FineTuneUsage(device_seconds=1.5, trained_samples=40)
    assert got.error == "out of memory" and got.metrics is None and got.fine_tuned_model is None
    assert model.status == "unknown" and model.task is None and model.raw["quantized"] is True
    (row,) = report.data
    assert row.inputs == 2 and row.cost == Decimal("0.5") and row.requests == 0 and row.raw["region"] == "eu"
    assert report.total_cost == 0 and report.group_by == []


def test_a_zero_amount_keeps_the_scale_the_gateway_sent(script_server: ScriptServer) -> None:
    zero = {"cost": "0.000000", "compute_seconds": "0.000000"}
    script_server.on("GET", "/v1/usage", Reply(200, {"data": [zero, {}], "total_cost": "0.000000"}))
    with Client(script_server.base_url, "k") as client:
        report = client.usage.get()
    assert str(report.total_cost) == "0.000000" and str(report.data[0].cost) == "0.000000"
    assert report.data[1].cost == Decimal(0) and report.data[1].compute_seconds == Decimal(0)  # left out
