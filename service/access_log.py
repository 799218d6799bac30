"""One access-log line per HTTP request: request id, method, path, status, latency, tenant, model.

A pure ASGI middleware (no BaseHTTPMiddleware overhead). It reads what the inner layers left in
the request scope: the request id (requests.py), the caller (auth.authenticate) and the route's
`model` path parameter. It never logs headers, query strings or bodies, so no key can leak.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import redact
from service.logging import request_id_var

log = logging.getLogger("maas.access")

_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: debug level only


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app becomes a 500
        state: dict[str, Any] = scope.setdefault("state", {})
        token = request_id_var.set(state.get("request_id"))

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            request_id_var.reset(token)
            self._log(scope, state, status, time.perf_counter() - started)

    @staticmethod
    def _log(scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        path = redact(str(scope.get("path", "")))  # a key pasted where an id belongs
        level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
        if not log.isEnabledFor(level):
            return
        principal = state.get("principal")
        model = (scope.get("path_params") or {}).get("model")
        method = scope.get("method", "")
        log.log(
            level,
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "event": "access",
                "request_id": state.get("request_id"),
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
                "tenant": getattr(principal, "tenant", None),
                "tenant_id": getattr(principal, "tenant_id", None),
                "key_id": getattr(principal, "key_id", None),
                "model": model,
            },
        )
