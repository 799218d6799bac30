"""A minimal closed-loop HTTP/1.1 load generator on bare asyncio streams.

Why not httpx or requests: on a 2-core machine the load generator shares the CPU with the
server under test, so every microsecond it spends per request is taken from the server. This
client prepares each request's bytes once, writes them with one call, and parses only the
status line, the headers it needs (Content-Length, Transfer-Encoding, Connection) and the body.

Closed loop: `concurrency` workers each keep one keep-alive connection and send the next request
as soon as the previous answer has arrived, so the offered load adapts to the server's speed and
the number of requests in flight is exactly `concurrency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    """What a request came back with: status code, body and whether the server closes the connection."""

    status: int
    body: bytes
    close: bool


def build_request(
    url: str, body: bytes, *, method: str = "POST", content_type: str = "image/jpeg", headers: dict[str, str]
) -> bytes:
    """The full request (head and body) as bytes, ready to be written as is."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one HTTP/1.1 response: Content-Length and chunked bodies; `close` if the server says so."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            close = "close" in value.lower()
    if chunked:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected: the empty line
                break
            chunks.append((await reader.readexactly(size + 2))[:-2])
        body = b"".join(chunks)
    elif length is not None:
        body = await reader.readexactly(length)
    else:  # no length: the body runs to the end of the connection
        body = await reader.read()
        close = True
    return Response(status, body, close)


class Connection:
    """One keep-alive connection that reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> Response:
        """Send one prepared request and return its response."""
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(raw)
        try:
            response = await read_response(self._reader)
        except BaseException:
            await self.close()
            raise
        if response.close:
            await self.close()
        return response

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def send_once(url: str, raw: bytes) -> Response:
    """One request on a fresh connection (readiness probes, smoke checks)."""
    parts = urlsplit(url)
    connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
    try:
        return await connection.request(raw)
    finally:
        await connection.close()


@dataclass
class LoadResult:
    """Per-request latencies (seconds) of successful requests, error counts, and the measured window."""

    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Successful requests per second over the measured window."""
        return len(self.latencies_s) / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0-100) of latency in milliseconds; nan when nothing succeeded."""
        if not self.latencies_s:
            return float("nan")
        if len(self.latencies_s) == 1:
            return self.latencies_s[0] * 1000
        cuts = statistics.quantiles(self.latencies_s, n=1000, method="inclusive")
        return cuts[min(len(cuts) - 1, max(0, round(q * 10) - 1))] * 1000


async def run_closed_loop(
    url: str, requests: Sequence[bytes], *, concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    """Drive `url` with `concurrency` closed-loop workers cycling over the prepared `requests`.

    Requests that complete during the first `warmup_s` seconds are not recorded; recording then runs
    for `duration_s` seconds, and requests still in flight at the end are not counted.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    start = loop.time()
    record_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    result = LoadResult(concurrency, duration_s)

    async def worker(offset: int) -> None:
        connection = Connection(host, port)
        bodies = itertools.islice(itertools.cycle(requests), offset, None)
        try:
            for raw in bodies:
                sent = loop.time()
                if sent >= stop_at:
                    return
                try:
                    response = await connection.request(raw)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    response = Response(-1, repr(exc).encode(), True)
                done = loop.time()
                if not record_from <= done <= stop_at:
                    continue
                if response.status == 200:
                    result.latencies_s.append(done - sent)
                else:
                    result.errors += 1
                    if len(result.error_samples) < 3:
                        result.error_samples.append(f"{response.status}: {response.body[:200]!r}")
                    if response.status < 0:
                        await asyncio.sleep(0.05)  # a refused connection: do not spin
        finally:
            await connection.close()

    await asyncio.gather(*(worker(i * 7) for i in range(concurrency)))
    return result
