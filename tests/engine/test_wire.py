"""What crosses between a front-end worker and the model process: pixels bit-exact, a request's
own messages compact and equal, errors as their own class with their headers, a cancelled call
cancelled on the other side."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import pytest

from service.engine import wire
from service.engine.client import EngineClient, EngineGone
from service.engine.shared import SharedArray
from service.errors import Overloaded
from service.serving.fairqueue import ServiceClass, Share
from service.serving.runtime.base import Classification, TaskParams

pytestmark = pytest.mark.anyio


async def _pair() -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter
]:
    import socket

    left, right = socket.socketpair()
    a = await asyncio.open_connection(sock=left)
    b = await asyncio.open_connection(sock=right)
    return a[0], a[1], b[0], b[1]


async def test_pixels_cross_bit_exact() -> None:
    _, writer_a, reader_b, writer_b = await _pair()
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 224, 224), dtype=np.uint8)
    await wire.send(writer_a, wire.Call(7, "infer", {"features": [pixels]}))
    got = await wire.receive(reader_b)
    assert isinstance(got, wire.Call) and got.id == 7
    (crossed,) = got.args["features"]
    assert crossed.dtype == np.uint8 and crossed.shape == pixels.shape
    assert crossed.tobytes() == pixels.tobytes()
    for writer in (writer_a, writer_b):
        writer.close()
        await writer.wait_closed()


async def test_a_requests_own_messages_cross_compact_and_come_back_equal() -> None:
    """An arrival notice, `infer` with pixels in shared memory and a ranked answer cross as
    tuples of plain values (smaller, faster to pickle) and arrive as the same messages; a call
    with anything else in it crosses whole."""
    _, writer_a, reader_b, writer_b = await _pair()
    pixels = SharedArray("worker-3.arena", 4096, (1, 3, 224, 224), "uint8")
    infer_args = {
        "model": "vit",
        "features": [pixels, pixels],
        "params": TaskParams(candidate_labels=("cat", "dog"), threshold=0.25),
        "top_k": 5,
        "deadline": 1234.5,
        "share": Share("tenant-a", 2.0, ServiceClass.BATCH),
        "arrived": True,
    }
    ranked = wire.Outcome([[Classification("cat", 0.75), Classification("dog", 0.25)], []], 0.002, 0.001)
    compacted = [
        wire.Call(1, "arrive", {"model": "vit", "delta": -1}, reply=False),
        wire.Call(2, "infer", infer_args),
        wire.Call(3, "infer", dict(reversed(infer_args.items()))),  # the arguments in any order
        wire.Reply(2, ranked),
    ]
    whole = [
        wire.Call(8, "infer", {**infer_args, "features": [np.zeros((1, 3, 2, 2), np.uint8)]}),  # no arena
        wire.Call(4, "infer", {**infer_args, "extra": 1}),  # an argument the compact frame has no place for
        wire.Reply(5, wire.Outcome([[0.5, 0.25]], 0.0, 0.0)),  # an embedding, not a ranking
        wire.Reply(6, failure=wire.Failure.of(Overloaded("full", retry_after_s=1))),
    ]
    for message in compacted:
        assert type(wire.compact(message)) is tuple
    for message in whole:
        assert wire.compact(message) is message
    for message in compacted + whole:
        wire.post(writer_a, message)
        got = await wire.receive(reader_b)
        if isinstance(message, wire.Call) and isinstance(message.args.get("features", [None])[0], np.ndarray):
            sent, crossed = message.args["features"][0], got.args["features"][0]  # type: ignore[union-attr]
            assert crossed.tobytes() == sent.tobytes()
        else:
            assert got == message
    for writer in (writer_a, writer_b):
        writer.close()
        await writer.wait_closed()


def test_an_error_crosses_as_its_own_class_with_its_headers() -> None:
    error = Overloaded("model 'm' has 64 inputs queued (limit 64); retry later", retry_after_s=3)
    again = wire.Failure.of(error).error()
    assert type(again) is Overloaded
    assert again.status_code == 503 and again.message == error.message
    assert again.headers == {"Retry-After": "3"}


class _StandIn:
    """A stand-in model process: answers `echo`, never answers `infer`, notes what it is told."""

    def __init__(self) -> None:
        self.seen: list[wire.Message] = []
        self.got = asyncio.Condition()
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                message = await wire.receive(reader)
                async with self.got:
                    self.seen.append(message)
                    self.got.notify_all()
                if isinstance(message, wire.Call) and message.op == "echo":
                    await wire.send(writer, wire.Reply(message.id, message.args["value"]))

    async def close(self, server: asyncio.Server) -> None:
        server.close()
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def until(self, count: int, kind: type, op: str | None = None) -> list[wire.Message]:
        """Once `count` messages of `kind` (calls of `op`) have arrived: those messages."""

        def matching() -> list[wire.Message]:
            return [
                m for m in self.seen if isinstance(m, kind) and (op is None or getattr(m, "op", None) == op)
            ]

        async with self.got:
            await self.got.wait_for(lambda: len(matching()) >= count)
        return matching()


async def test_a_caller_that_leaves_cancels_its_call(tmp_path: Path) -> None:
    stand_in = _StandIn()
    server = await asyncio.start_unix_server(stand_in.handle, path=str(tmp_path / "engine.sock"))
    client = EngineClient(tmp_path / "engine.sock", worker=3)
    await client.start(timeout_s=10)
    assert await client.call("echo", value=[1, 2]) == [1, 2]

    waiting = asyncio.create_task(client.call("infer", model="m"))
    (infer,) = await stand_in.until(1, wire.Call, "infer")
    waiting.cancel()
    (cancel,) = await stand_in.until(1, wire.Cancel)
    assert isinstance(cancel, wire.Cancel) and isinstance(infer, wire.Call) and cancel.id == infer.id
    await client.close()
    await stand_in.close(server)


async def test_calls_waiting_on_a_model_process_that_goes_away_fail_with_503_at_once(tmp_path: Path) -> None:
    stand_in = _StandIn()
    server = await asyncio.start_unix_server(stand_in.handle, path=str(tmp_path / "engine.sock"))
    client = EngineClient(tmp_path / "engine.sock", worker=0)
    await client.start(timeout_s=10)
    hanging = [asyncio.create_task(client.call("infer", model="m")) for _ in range(3)]
    await stand_in.until(3, wire.Call, "infer")
    server.close()
    for writer in stand_in.writers:  # the process dies: its end of every connection closes
        writer.close()
    for call in hanging:
        with pytest.raises(EngineGone) as raised:
            await asyncio.wait_for(call, timeout=10)
        assert raised.value.status_code == 503 and raised.value.headers["Retry-After"] == "1"
    with pytest.raises(EngineGone):  # and a new call while it is away does not wait for it either
        await client.call("infer", model="m")
    await client.close()
    await stand_in.close(server)
