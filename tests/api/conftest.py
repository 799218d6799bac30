"""Fixtures shared by the API tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.serving.runtime.base import ModelAdapter, Output
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many inputs each forward pass got: a spy on the image classifier, which still runs it."""
    calls: list[int] = []
    predict = ImageClassificationAdapter.predict

    def counting_predict(
        self: ImageClassificationAdapter, features: list[Any], *, top_k: int
    ) -> list[Output]:
        calls.append(len(features))
        return predict(self, features, top_k=top_k)

    monkeypatch.setattr(ImageClassificationAdapter, "predict", counting_predict)
    return calls


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """A gate in front of the image classifier's forward pass (a module may hold another model
    by defining its own `gate`)."""
    with held(ImageClassificationAdapter, monkeypatch) as gate:
        yield gate


@contextlib.contextmanager
def held(adapter: type[ModelAdapter], monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """A gate in front of `adapter`'s forward pass for a test, opened when the test ends."""
    gate = Gate()
    gate.hold(adapter, monkeypatch)
    try:
        yield gate
    finally:
        gate.open.set()


class Gate:
    """Holds a model's forward passes until opened (open to begin with); records the features of
    each batch that reached it."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.batches: list[list[Any]] = []

    def hold(self, adapter: type[ModelAdapter], monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the gate in front of `adapter`'s forward pass (which still runs once let through)."""
        predict = adapter.predict
        gate = self

        def held_predict(self: ModelAdapter, features: list[Any], *, top_k: int) -> list[Output]:
            gate.batches.append(list(features))
            gate.entered.set()
            gate.open.wait(timeout=30)
            return predict(self, features, top_k=top_k)

        monkeypatch.setattr(adapter, "predict", held_predict)

    async def first(self, client: httpx.AsyncClient, path: str, **body: Any) -> asyncio.Task[httpx.Response]:
        """Close the gate, post `body` to `path`, and return once its batch is held at the model."""
        self.open.clear()
        self.entered.clear()
        first = asyncio.create_task(client.post(path, **body))
        await asyncio.to_thread(self.entered.wait, 30)
        return first

    async def one_then_the_rest(
        self, client: httpx.AsyncClient, model: str, bodies: list[dict[str, Any]]
    ) -> list[httpx.Response]:
        """Post `bodies[0]` and hold its forward pass; post the rest, wait until they are all
        queued behind it, then let the model run: the answers, in order (`batches` holds what
        reached the model meanwhile)."""
        self.batches.clear()
        path = f"/v1/models/{model}/predict"
        first = await self.first(client, path, **bodies[0])
        rest = [asyncio.create_task(client.post(path, **body)) for body in bodies[1:]]
        entry = client._transport.app.state.gateway.registry.entries[model]  # type: ignore[attr-defined]
        async with asyncio.timeout(30):
            while entry.queue_depth < len(rest):  # all queued behind the held forward pass
                await asyncio.sleep(0.001)
        self.open.set()
        return [await task for task in [first, *rest]]
