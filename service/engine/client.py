"""The front-end worker's end of the connection to the model process (see wire.py).

`EngineClient.call` sends a call and awaits its reply; if the awaiting task is cancelled (the
client hung up, or the deadline passed) a `Cancel` follows, so that the model process drops the
call's queued inputs. When the model process goes away (it crashed, or is restarting), every
call waiting on it fails at once with 503 and `Retry-After`, and the client reconnects in the
background: no request hangs on a process that is not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.engine import wire
from service.engine.shared import Arena
from service.errors import ModelUnavailable

log = logging.getLogger(__name__)

RECONNECT_S = 0.05  # between attempts while the model process (re)starts


@dataclass(frozen=True)
class EngineAddress:
    """Where worker number `worker` finds the model process, and how long it waits for it to start."""

    path: Path
    worker: int = 0
    start_timeout_s: float = 600.0
    shared_bytes: int = 0  # the worker's shared-memory arena for pixels (0: they cross the socket)


class EngineGone(ModelUnavailable):
    """The model process is not reachable (crashed or restarting): 503, retry shortly."""

    default_retry_after_s = 1


class EngineClient:
    """One multiplexed connection to the model process, kept open while the worker runs."""

    def __init__(self, path: Path, *, worker: int = 0, shared_bytes: int = 0) -> None:
        self.path = path
        self.worker = worker
        self.arena = Arena.create(path.parent, f"arena-{worker}-{os.getpid()}", shared_bytes)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connections = 0  # how many times it has connected (1 + reconnections)
        # what to do with a notice from the model process, by its op (called with its args)
        self.on_notice: dict[str, Callable[..., None]] = {}

    async def start(self, timeout_s: float) -> None:
        """Connect (waiting up to `timeout_s` for the model process to listen), then keep the
        connection up in the background."""
        self._task = asyncio.create_task(self._keep_connected(), name="maas-engine-client")
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def call(self, op: str, **args: Any) -> Any:
        """Run `op` in the model process and return its value; its `GatewayError` is raised here."""
        if not self._connected.is_set() or self._writer is None:
            raise EngineGone("the model process is restarting; retry shortly")
        call = wire.Call(next(self._ids), op, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call.id] = future
        try:
            await wire.send(self._writer, call)
            return await future
        except asyncio.CancelledError:
            # the task's cancellation cancels the future it awaits: cancelled, not answered
            answered = future.done() and not future.cancelled()
            if not answered and self._writer is not None and self._connected.is_set():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await asyncio.shield(wire.send(self._writer, wire.Cancel(call.id)))
            raise
        except ConnectionError:
            raise EngineGone("the model process stopped; retry shortly") from None
        finally:
            self._waiting.pop(call.id, None)

    def notify(self, op: str, **args: Any) -> None:
        """Send a notice (no reply) if connected; dropped otherwise (the model process that comes
        back starts from a clean slate)."""
        if self._writer is not None and self._connected.is_set():
            wire.post(self._writer, wire.Call(next(self._ids), op, args, reply=False))

    async def _keep_connected(self) -> None:
        while not self._closing:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            self._writer = writer
            self.connections += 1
            try:
                arena = self.arena.path.name if self.arena is not None else None
                hello = wire.Call(0, "hello", {"worker": self.worker, "arena": arena}, reply=False)
                await wire.send(writer, hello)
                self._connected.set()
                await self._read(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self._connected.clear()
                self._writer = None
                writer.close()
                self._fail_waiting()
            if not self._closing:
                log.warning("worker %d: lost the model process; reconnecting", self.worker)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await wire.receive(reader)
            if isinstance(message, wire.Call) and (handler := self.on_notice.get(message.op)):
                handler(**message.args)
            if not isinstance(message, wire.Reply):
                continue
            future = self._waiting.get(message.id)
            if future is None or future.done():
                continue
            if message.failure is not None:
                future.set_exception(message.failure.error())
            else:
                future.set_result(message.value)

    def _fail_waiting(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(EngineGone("the model process stopped while serving this call; retry"))

    def crossing(self, features: list[Any]) -> contextlib.AbstractContextManager[list[Any]]:
        """`features` as a call should carry them: through the arena while the block runs (see
        shared.py), else as they are."""
        if self.arena is None:
            return contextlib.nullcontext(features)
        return self.arena.crossing(features)

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.arena is not None:
            self.arena.close()
