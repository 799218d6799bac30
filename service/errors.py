"""One error hierarchy, rendered as one JSON shape: {"error": {"type", "message", "request_id"}}."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from service.observability.middleware import request_id_of
from service.redaction import redact

CLIENT_CLOSED = 499  # nginx's code for "client closed the request": in usage events and metrics only


class GatewayError(Exception):
    """An error the client caused or should know about; carries its HTTP status and type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    # the Retry-After of an error of this class when the raiser names none (None: no header)
    default_retry_after_s: ClassVar[int | None] = None
    param: str | None = None  # the request field at fault, where known (OpenAI's error shape names it)

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        if retry_after_s is None:
            retry_after_s = self.default_retry_after_s
        if retry_after_s is not None:  # whole seconds, at least one: a client must not spin
            self.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request"


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_denied"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found"


class Conflict(GatewayError):
    status_code = 409
    error_type = "conflict"


class MethodNotAllowed(GatewayError):
    status_code = 405
    error_type = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    error_type = "unsupported_media_type"


class InvalidInput(GatewayError):
    status_code = 422
    error_type = "invalid_input"


class Overloaded(GatewayError):
    """The model's queue is full; `Retry-After` says when it should have room."""

    status_code = 503
    error_type = "overloaded"
    default_retry_after_s = 1


class DeadlineExceeded(GatewayError):
    status_code = 504
    error_type = "timeout"


class ModelUnavailable(GatewayError):
    status_code = 503
    error_type = "model_unavailable"
    default_retry_after_s = 30


class RateLimited(GatewayError):
    """429: a rate limit, a concurrency limit or a quota; `Retry-After` says when to come back."""

    status_code = 429
    error_type = "rate_limited"
    default_retry_after_s = 1


class LimiterUnavailable(GatewayError):
    """503: the shared rate limiter cannot be reached and the gateway is set to fail closed."""

    status_code = 503
    error_type = "unavailable"
    default_retry_after_s = 1


_BY_STATUS: dict[int, type[GatewayError]] = {
    cls.status_code: cls
    for cls in (InvalidRequest, NotFound, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType)
}


def error_headers(request: Request, exc: GatewayError) -> dict[str, str]:
    """The headers of an error's answer, whatever its shape: its own (Retry-After, WWW-Authenticate)
    and the rate-limit headers, which go on every answer of a limited route, errors included."""
    return {**getattr(request.state, "rate_limit_headers", {}), **exc.headers}


def error_response(request: Request, exc: GatewayError) -> JSONResponse:
    """Render `exc` in the gateway's one error shape. A key pasted where a name or an id goes is
    never echoed back: the message is redacted."""
    body: dict[str, Any] = {
        "error": {
            "type": exc.error_type,
            "message": redact(exc.message),
            "request_id": request_id_of(request),
        }
    }
    return JSONResponse(body, status_code=exc.status_code, headers=error_headers(request, exc))


def framework_error(exc: StarletteHTTPException | RequestValidationError) -> GatewayError:
    """The framework's error as ours (a validation error names each field at fault)."""
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return InvalidInput(problems or "invalid request")
    err = _BY_STATUS.get(exc.status_code, InvalidRequest)(str(exc.detail))
    err.headers = dict(exc.headers or {})
    return err


def allowed_methods(request: Request, exc: StarletteHTTPException) -> str:
    """The `Allow` header of a 405: every method of every route on the request's path, as the
    OpenAPI schema lists them (Starlette's own header names only the first route's, and the gateway
    has several routes on one path); Starlette's for a route outside the schema (/docs)."""
    path = request.url.path
    methods = {
        method.upper()
        for template, operations in request.app.openapi()["paths"].items()
        if compile_path(template)[0].match(path)
        for method in operations
    }
    return ", ".join(sorted(methods)) or (exc.headers or {}).get("Allow", "")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, answer in the same JSON shape."""

    async def on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return error_response(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = framework_error(exc)
        if exc.status_code == 405:
            error.headers["Allow"] = allowed_methods(request, exc)
        # a route of another protocol draws its errors in that protocol's shape, this one too
        render = getattr(request.scope.get("route"), "render_error", error_response)
        response: JSONResponse = render(request, error)
        response.status_code = exc.status_code
        return response

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(request, framework_error(exc))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
