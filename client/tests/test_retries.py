"""Retries, backoff, Retry-After and Idempotency-Key, against a real HTTP server that answers from
a script. Waits go through an injected sleep that records them: no test sleeps."""

from __future__ import annotations

import socket

import pytest
from conftest import Reply, ScriptServer, png
from maas_client import (
    APIConnectionError,
    APIStatusError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    DeadlineExceededError,
    InternalServerError,
    ModelUnavailableError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
)

PREDICT = "/v1/models/m/predict"
ANSWER = {
    "id": "req_1",
    "object": "prediction",
    "model": "m",
    "predictions": [[{"label": "cat", "score": 0.9}]],
    "usage": {"inputs": 1},
}


def error(status: int, type_: str, retry_after: str | None = None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status, {"error": {"type": type_, "message": f"{type_}!", "request_id": "req_e"}}, headers)


def test_429_then_503_with_retry_after_then_200_resends_the_same_idempotency_key(
    script_server: ScriptServer,
) -> None:
    script_server.on(
        "POST", PREDICT, error(429, "rate_limited", "2"), error(503, "overloaded", "1"), Reply(200, ANSWER)
    )
    sleeps: list[float] = []
    with Client(script_server.base_url, "mk_k", sleep=sleeps.append) as client:
        result = client.predict("m", png())
    assert result.predictions[0][0].label == "cat"
    attempts = script_server.attempts("POST", PREDICT)
    assert len(attempts) == 3 and sleeps == [2.0, 1.0]
    keys = {a.headers["idempotency-key"] for a in attempts}
    assert len(keys) == 1 and keys.pop().startswith("idem_")
    assert all(a.headers["authorization"] == "Bearer mk_k" for a in attempts)
    assert all(a.body == attempts[0].body for a in attempts)


def test_each_logical_call_gets_its_own_key_and_gets_carry_none(script_server: ScriptServer) -> None:
    script_server.on("POST", PREDICT, Reply(200, ANSWER))
    script_server.on("GET", "/v1/models", Reply(200, {"data": []}))
    with Client(script_server.base_url, "mk_k") as client:
        client.predict("m", png())
        client.predict("m", png())
        assert client.models.list() == []
    first, second = script_server.attempts("POST", PREDICT)
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert "idempotency-key" not in script_server.attempts("GET", "/v1/models")[0].headers


def test_retries_stop_after_max_retries_with_the_typed_error(script_server: ScriptServer) -> None:
    script_server.on("POST", PREDICT, error(429, "rate_limited", "5"))
    sleeps: list[float] = []
    client = Client(script_server.base_url, "k", max_retries=3, sleep=sleeps.append)
    with client, pytest.raises(RateLimitError) as caught:
        client.predict("m", png())
    assert caught.value.retry_after == 5 and caught.value.request_id == "req_e"
    assert len(script_server.attempts("POST", PREDICT)) == 4 and sleeps == [5.0] * 3


def test_without_retry_after_backoff_is_exponential_with_full_jitter(script_server: ScriptServer) -> None:
    script_server.on("POST", PREDICT, Reply(502, {}), error(504, "timeout"), Reply(200, ANSWER))
    sleeps: list[float] = []
    with Client(script_server.base_url, "k", sleep=sleeps.append) as client:
        client.predict("m", png())
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0
    policy = RetryPolicy(initial_delay=0.5, max_delay=8.0)
    assert [policy.delay(n, None, lambda: 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(3, None, lambda: 0.25) == 1.0


def test_a_retry_after_over_the_cap_raises_at_once_instead_of_retrying_too_early(
    script_server: ScriptServer,
) -> None:
    # a spent monthly quota says "come back in weeks": waiting a minute and asking again is useless
    script_server.on("POST", PREDICT, error(429, "rate_limited", "3600"), Reply(200, ANSWER))
    sleeps: list[float] = []
    client = Client(script_server.base_url, "k", sleep=sleeps.append)
    with client, pytest.raises(RateLimitError) as caught:
        client.predict("m", png())
    assert caught.value.retry_after == 3600 and sleeps == []
    assert len(script_server.attempts("POST", PREDICT)) == 1
    script_server.on("POST", PREDICT, error(503, "overloaded", "60"), Reply(200, ANSWER))
    with Client(script_server.base_url, "k", sleep=sleeps.append) as client:
        client.predict("m", png())  # exactly at the cap: waited for
    assert sleeps == [60.0]


def test_a_proxy_error_is_retried_only_for_calls_the_gateway_answers_the_same_when_repeated(
    script_server: ScriptServer,
) -> None:
    # a 502 from a proxy may come after the gateway made the key: sending it again makes a second
    script_server.on(
        "POST", "/v1/admin/tenants/acme/keys", Reply(502, "bad gateway"), Reply(201, {"id": "k"})
    )
    script_server.on("GET", "/v1/admin/tenants/acme/keys", Reply(504, {}), Reply(200, {"data": []}))
    sleeps: list[float] = []
    with Client(script_server.base_url, "k", sleep=sleeps.append) as client:
        with pytest.raises(InternalServerError):
            client.admin.keys.create("acme")
        assert client.admin.keys.list("acme") == []
    assert len(script_server.attempts("POST", "/v1/admin/tenants/acme/keys")) == 1 and len(sleeps) == 1


def test_client_errors_are_not_retried(script_server: ScriptServer) -> None:
    script_server.on("POST", PREDICT, error(400, "invalid_request"))
    sleeps: list[float] = []
    with Client(script_server.base_url, "k", sleep=sleeps.append) as client, pytest.raises(BadRequestError):
        client.predict("m", png())
    assert len(script_server.attempts("POST", PREDICT)) == 1 and sleeps == []


def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    with Client(f"http://127.0.0.1:{port}", "k", sleep=sleeps.append) as client:
        with pytest.raises(APIConnectionError) as caught:
            client.models.list()
        assert not client.ready()
    assert caught.value.status_code is None and len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "type_", "expected"),
    [
        (401, "authentication_error", AuthenticationError),
        (403, "permission_denied", PermissionDeniedError),
        (409, "conflict", ConflictError),
        (503, "overloaded", OverloadedError),
        (503, "model_unavailable", ModelUnavailableError),
        (504, "timeout", DeadlineExceededError),
        (500, "internal_error", InternalServerError),
    ],
)
def test_each_error_type_maps_to_its_exception(
    script_server: ScriptServer, status: int, type_: str, expected: type[Exception]
) -> None:
    script_server.on("GET", "/v1/models/m", error(status, type_, "1"))
    with Client(script_server.base_url, "k", max_retries=0) as client, pytest.raises(expected) as caught:
        client.models.get("m")
    assert caught.value.status_code == status and caught.value.type == type_  # type: ignore[attr-defined]
    if status == 503:
        assert isinstance(caught.value, ServiceUnavailableError) and caught.value.retry_after == 1


def test_a_non_json_error_from_a_proxy_still_raises_typed(script_server: ScriptServer) -> None:
    script_server.on("GET", "/v1/models", Reply(502, "bad gateway"))
    with (
        Client(script_server.base_url, "k", max_retries=0) as client,
        pytest.raises(InternalServerError) as caught,
    ):
        client.models.list()
    assert caught.value.status_code == 502 and "bad gateway" in caught.value.message


@pytest.mark.anyio
async def test_async_client_retries_the_same_way(script_server: ScriptServer) -> None:
    script_server.on("POST", PREDICT, error(429, "rate_limited", "3"), Reply(200, ANSWER))
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(script_server.base_url, "k", sleep=record) as client:
        result = await client.predict("m", png())
    assert result.usage.inputs == 1 and sleeps == [3.0]
    first, second = script_server.attempts("POST", PREDICT)
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]


def test_a_caller_given_idempotency_key_is_sent_on_every_try(script_server: ScriptServer) -> None:
    script_server.on("POST", PREDICT, error(503, "overloaded", "0"), Reply(200, ANSWER))
    with Client(script_server.base_url, "k", sleep=lambda s: None) as client:
        client.predict("m", [png(), png()], idempotency_key="order-42")
    assert [a.headers["idempotency-key"] for a in script_server.attempts("POST", PREDICT)] == ["order-42"] * 2


def test_a_success_status_with_a_body_that_is_not_the_api_raises_typed(script_server: ScriptServer) -> None:
    script_server.on("GET", "/v1/models/m", Reply(200, ["not", "a", "model"]))
    with Client(script_server.base_url, "k") as client, pytest.raises(APIStatusError) as caught:
        client.models.get("m")
    assert caught.value.type == "invalid_response" and caught.value.status_code == 200
