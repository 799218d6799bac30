"""Key changes across replicas: a Redis pub/sub channel on which a process that changed a key or
a tenant (revoke, rotate, suspend, resume, limits) says so, and on which every gateway listens
to drop its key cache at once, so that the change holds on the next request everywhere.

Best effort on purpose: the key cache's 1 s lifetime stays the bound when Redis is absent, down,
or a message is lost. Redis trouble never fails a request or an admin change; it is logged (at
most one line per 10 s) and the listener reconnects, dropping the cache whenever it does, since
it may have missed messages meanwhile.

The same channel pattern carries model registrations (`MODELS_CHANNEL`): there a message makes
every replica sync its models with the database at once, its periodic sync being the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

CHANNEL = "maas:keys:changed"
MODELS_CHANNEL = "maas:models:changed"
TIMEOUT_S = 0.5  # connect and command timeout: an admin change never waits long on Redis
RECONNECT_S = (0.1, 5.0)  # the listener's back-off after a failure: first, longest


class KeyChangeMetrics:
    """The listener's state and the messages it saw, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.subscribed = Gauge(
            "maas_key_changes_subscribed",
            "1 while this replica listens for key changes on Redis; 0: only the 1 s key cache bounds them.",
            registry=registry,
        )
        self.received = Counter(
            "maas_key_changes_received",
            "Key changes heard from any replica (each drops the key cache).",
            registry=registry,
        )
        self.published = Counter(
            "maas_key_changes_published",
            "Key changes this replica announced, by outcome: sent, or failed (Redis unreachable).",
            ["outcome"],
            registry=registry,
        )
        self.reconnects = Counter(
            "maas_key_changes_reconnects",
            "Times the listener lost Redis and connected again.",
            registry=registry,
        )


class KeyChanges:
    """Publishes key changes to, and listens for them on, the Redis at `url`."""

    def __init__(
        self,
        url: str,
        *,
        channel: str = CHANNEL,
        metrics: KeyChangeMetrics | None = None,
        topic: str = "key change",
        bound: str = "within 1 s",
    ) -> None:
        self.channel = channel
        self.topic = topic  # what the messages announce, and how soon replicas see it without them (logs)
        self.bound = bound
        self.metrics = metrics
        self._url = url
        self.client_name = (
            f"maas-{topic.replace(' ', '-')}s-{secrets.token_hex(4)}"  # the listener, in CLIENT LIST
        )
        # a synchronous client: admin routes run on worker threads, the CLI has no event loop
        # one retry (a pooled connection Redis dropped), not the client's default back-off
        self._publisher = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 1)
        )
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._last_warning = 0.0

    def publish(self, reason: str) -> None:
        """Tell every listening replica to drop its key cache (`reason`, e.g. `revoke`, is for
        logs). Returns once Redis has taken the message, or after logging why it could not."""
        try:
            self._publisher.publish(self.channel, reason)
        except (RedisError, OSError) as exc:  # an admin change is rare: every failure is logged
            error = type(exc).__name__
            log.warning(
                "could not publish a %s to Redis (%s); replicas see it %s", self.topic, error, self.bound
            )
            if self.metrics is not None:
                self.metrics.published.labels("failed").inc()
            return
        if self.metrics is not None:
            self.metrics.published.labels("sent").inc()

    async def start(self, on_change: Callable[[], None], *, wait_s: float = TIMEOUT_S) -> None:
        """Listen in the background, calling `on_change` for each change published anywhere (and
        after each reconnection). Waits up to `wait_s` for the subscription, never failing."""
        self._task = asyncio.create_task(self._listen(on_change), name="maas-key-changes")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._subscribed.wait()

    @property
    def subscribed(self) -> bool:
        """Whether the listener is subscribed now (and has dropped the cache since it subscribed)."""
        return self._subscribed.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.close_publisher()

    def close_publisher(self) -> None:
        """Close the publishing side (all a process that only publishes, like the CLI, opened)."""
        self._publisher.close()

    async def _listen(self, on_change: Callable[[], None]) -> None:
        backoff = RECONNECT_S[0]
        while True:
            # no silent reconnects inside the client: each one must drop the cache (see below)
            client = aioredis.Redis.from_url(
                self._url,
                socket_connect_timeout=TIMEOUT_S,
                retry=AsyncRetry(NoBackoff(), 0),  # an asyncio client takes the asyncio Retry
                client_name=self.client_name,
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    on_change()  # changes published while this replica was not subscribed
                    self._subscribed.set()
                    if self.metrics is not None:
                        self.metrics.subscribed.set(1)
                    backoff = RECONNECT_S[0]
                    while True:
                        # waits on the socket; the timeout only bounds each wait
                        if await pubsub.get_message(timeout=1.0) is not None:
                            on_change()
                            if self.metrics is not None:
                                self.metrics.received.inc()
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set() and self.metrics is not None:
                    self.metrics.reconnects.inc()
                if self.metrics is not None:
                    self.metrics.subscribed.set(0)
                self._subscribed.clear()
                on_change()
                self._warn(
                    f"{self.topic}s: lost Redis ({type(exc).__name__}); retrying, seen {self.bound} meanwhile"
                )
                await asyncio.sleep(backoff)  # a back-off between reconnections, not a timing assumption
                backoff = min(backoff * 2, RECONNECT_S[1])
            finally:
                await client.aclose()

    def _warn(self, message: str) -> None:
        if time.monotonic() - self._last_warning > 10:  # one line per 10 s, not one per request
            self._last_warning = time.monotonic()
            log.warning("%s", message)
