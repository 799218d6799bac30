"""The messages between front-end workers and the model process, and how they cross.

One Unix socket connection per front-end worker carries every call, multiplexed by id: a `Call`
goes to the model process, a `Reply` (a value or an error) comes back, and a `Cancel` tells it
that the caller left (a client hung up): its inputs still queued are dropped before the device.
Frames are a 4-byte length and a pickle (protocol 5) of the message, each written at once. The
uint8 pixels a worker decoded cross through its shared-memory arena (shared.py), and only their
place crosses here; where they do not fit, numpy arrays cross as one copy of their bytes, never as
lists of floats. The socket lives in a private folder (mode 0700) of the user running the gateway;
nothing else connects to it.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

from service.errors import GatewayError

_LENGTH = struct.Struct("!I")
MAX_FRAME = 1 << 31  # a frame is one request's inputs: bounded by MAAS_MAX_BODY_BYTES long before this


@dataclass(frozen=True)
class Call:
    """A front-end worker asks the model process to run `op` with `args`; or, as a notice
    (`reply` false), either side tells the other of something (the model process: a key change
    made through another worker)."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    reply: bool = True  # False: a notice, answered by nothing


@dataclass(frozen=True)
class Failure:
    """A `GatewayError` as it crosses: re-raised in the worker as the same class, message and headers."""

    error_type: str
    message: str
    headers: dict[str, str]
    param: str | None

    @classmethod
    def of(cls, error: GatewayError) -> Failure:
        return cls(type(error).__name__, error.message, dict(error.headers), error.param)

    def error(self) -> GatewayError:
        """The error again, as its own class (a plain 500 if this side does not know the class)."""
        kind = _error_classes().get(self.error_type, GatewayError)
        error = kind.__new__(kind)
        Exception.__init__(error, self.message)
        error.message, error.headers, error.param = self.message, dict(self.headers), self.param
        return error


@dataclass(frozen=True)
class Reply:
    id: int
    value: Any = None
    failure: Failure | None = None


@dataclass(frozen=True)
class Cancel:
    """The caller of call `id` left: stop it."""

    id: int


Message = Call | Reply | Cancel


def _error_classes() -> dict[str, type[GatewayError]]:
    found: dict[str, type[GatewayError]] = {}
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        kind = pending.pop()
        found[kind.__name__] = kind
        pending.extend(kind.__subclasses__())
    return found


def post(writer: asyncio.StreamWriter, message: Message) -> None:
    """Write `message` on `writer` now, one frame in one write, without waiting for the
    connection's buffer (a notice: no task of its own)."""
    payload = pickle.dumps(message, protocol=5)
    writer.write(_LENGTH.pack(len(payload)) + payload)


async def send(writer: asyncio.StreamWriter, message: Message) -> None:
    """`post`, then wait while the connection's buffer is full (ConnectionError once it is lost)."""
    post(writer, message)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Message:
    """The next message; `asyncio.IncompleteReadError` when the other side has gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    message: Message = pickle.loads(await reader.readexactly(length))
    return message
