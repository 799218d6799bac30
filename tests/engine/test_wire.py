"""What crosses between a front-end worker and the model process: pixels bit-exact, errors as
their own class with their headers, a cancelled call cancelled on the other side."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import pytest

from service.engine import wire
from service.engine.client import EngineClient, EngineGone
from service.errors import Overloaded

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
