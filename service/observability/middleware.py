"""The request middleware: every request gets an id (`req_…`, echoed in `X-Request-Id` and in
error bodies), and one access-log line (request id, method, path, status, latency, tenant,
model) once it is answered.

A pure ASGI middleware (no BaseHTTPMiddleware overhead). It reads what the inner layers left in
the request scope: the caller (set by authentication) and the route's `model` path parameter.
It never logs headers, query strings or bodies, and redacts the path, so no key can leak.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.ids import new_id
from service.observability.logs import request_id_var
from service.redaction import redact

REQUEST_ID_HEADER = b"x-request-id"

log = logging.getLogger("maas.access")

_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: debug level only


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request (a fresh one if it ran outside the middleware)."""
    state = request.scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = new_id("req")
    return str(state["request_id"])


class RequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app becomes a 500
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = new_id("req")
        token = request_id_var.set(state["request_id"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # read at send time: an idempotent replay answers with the first request's id
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, str(state["request_id"]).encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            _log(scope, state, status, time.perf_counter() - started)


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
