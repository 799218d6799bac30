"""The messages between front-end workers and the model process, and how they cross.

One Unix socket connection per front-end worker carries every call, multiplexed by id: a `Call`
goes to the model process, a `Reply` (a value or an error) comes back, and a `Cancel` tells it
that the caller left (a client hung up): its inputs still queued are dropped before the device.
Frames are a 4-byte length and a pickle (protocol 5) of the message, each written at once; the
messages every one-image request sends and receives (its arrival notice, its `infer` call with
pixels in shared memory, a ranked answer) cross as tuples of plain values instead of dataclasses,
which pickle several times faster (`compact`, `expand`). The
uint8 pixels a worker decoded cross through its shared-memory arena (shared.py), and only their
place crosses here; where they do not fit, numpy arrays cross as one copy of their bytes, never as
lists of floats. The socket lives in a private folder (mode 0700) of the user running the gateway;
nothing else connects to it.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field, fields
from typing import Any

from service.engine.shared import SharedArray
from service.errors import GatewayError
from service.serving.fairqueue import ServiceClass, Share
from service.serving.runtime.base import Classification, TaskParams

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


@dataclass(frozen=True)
class Outcome:
    """The outputs of one `infer` call's inputs, in order, and what they cost (for metering)."""

    outputs: list[Any]
    compute_s: float
    queue_s: float


Message = Call | Reply | Cancel

# compact frames: a tag, then the message's values (see `compact`)
_INFER, _ARRIVE, _RANKED = 1, 2, 3
_INFER_ARGS = frozenset({"model", "features", "params", "top_k", "deadline", "share", "arrived"})
_PARAMS = tuple(f.name for f in fields(TaskParams))
_SHARED = tuple(f.name for f in fields(SharedArray))
_CLASSES = {service_class.value: service_class for service_class in ServiceClass}  # faster than the call


def compact(message: Message) -> Message | tuple[Any, ...]:
    """`message` as a tuple of plain values where it is one of the messages every request sends
    (an arrival notice; `infer` with its pixels in shared memory; a ranked answer); else itself.
    `expand` gives the same message back."""
    kind = type(message)
    if kind is Call:
        call: Call = message  # type: ignore[assignment]
        args = call.args
        if call.op == "arrive" and not call.reply and len(args) == 2:
            return (_ARRIVE, call.id, args["model"], args["delta"])
        if call.op == "infer" and call.reply and args.keys() == _INFER_ARGS:
            features, params, share = args["features"], args["params"], args["share"]
            in_arenas = all(type(feature) is SharedArray for feature in features)
            if type(params) is TaskParams and type(share) is Share and in_arenas:
                return (
                    _INFER,
                    call.id,
                    args["model"],
                    [tuple(getattr(f, name) for name in _SHARED) for f in features],
                    tuple(getattr(params, name) for name in _PARAMS),
                    args["top_k"],
                    args["deadline"],
                    (share.tenant, share.weight, share.service_class.value),
                    args["arrived"],
                )
    elif kind is Reply:
        reply: Reply = message  # type: ignore[assignment]
        outcome = reply.value
        if type(outcome) is Outcome and all(
            type(output) is list and all(type(item) is Classification for item in output)
            for output in outcome.outputs
        ):
            ranked = [[(item.label, item.score) for item in output] for output in outcome.outputs]
            return (_RANKED, reply.id, ranked, outcome.compute_s, outcome.queue_s)
    return message


def expand(frame: Message | tuple[Any, ...]) -> Message:
    """The message `compact` made `frame` from."""
    if type(frame) is not tuple:
        return frame  # type: ignore[return-value]
    tag, ident, *values = frame
    if tag == _ARRIVE:
        model, delta = values
        return Call(ident, "arrive", {"model": model, "delta": delta}, reply=False)
    if tag == _INFER:
        model, features, params, top_k, deadline, (tenant, weight, service_class), arrived = values
        args = {
            "model": model,
            "features": [SharedArray(*feature) for feature in features],
            "params": TaskParams(*params),
            "top_k": top_k,
            "deadline": deadline,
            "share": Share(tenant, weight, _CLASSES[service_class]),
            "arrived": arrived,
        }
        return Call(ident, "infer", args)
    ranked, compute_s, queue_s = values
    outputs = [[Classification(label, score) for label, score in output] for output in ranked]
    return Reply(ident, Outcome(outputs, compute_s, queue_s))


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
    payload = pickle.dumps(compact(message), protocol=5)
    writer.write(_LENGTH.pack(len(payload)) + payload)


async def send(writer: asyncio.StreamWriter, message: Message) -> None:
    """`post`, then wait while the connection's buffer is full (ConnectionError once it is lost)."""
    post(writer, message)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Message:
    """The next message; `asyncio.IncompleteReadError` when the other side has gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return expand(pickle.loads(await reader.readexactly(length)))
