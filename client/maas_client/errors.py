"""Typed exceptions, one per error type of the gateway's error shape
`{"error": {"type", "message", "request_id"}}`. Every one is a `MaasError`."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DeadlineExceededError",
    "InternalServerError",
    "InvalidInputError",
    "MaasError",
    "MethodNotAllowedError",
    "ModelUnavailableError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
]


class MaasError(Exception):
    """Base of every error this client raises.

    `status_code` is the HTTP status (None when no answer came), `type` the gateway's error
    type (`not_found`, `rate_limited`, ...), `message` its explanation, `request_id` the id to
    quote to the operator, and `retry_after` the seconds the gateway asked to wait, if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str = "error",
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        status = f"{self.status_code} " if self.status_code is not None else ""
        return f"{status}{self.type}: {self.message}{where}"


class APIConnectionError(MaasError):
    """The gateway could not be reached, or the connection broke before an answer came."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class APIStatusError(MaasError):
    """The gateway answered with an error status (the subclasses say which)."""


class BadRequestError(APIStatusError):
    """400 `invalid_request` (malformed body) or 422 `invalid_input` (see `InvalidInputError`)."""


class InvalidInputError(BadRequestError):
    """422 `invalid_input`: an input is not a decodable image, bad base64, empty text, bad `top_k`."""


class AuthenticationError(APIStatusError):
    """401: the key is missing, malformed, unknown or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model or action."""


class NotFoundError(APIStatusError):
    """404: unknown model, job, file, tenant or route."""


class MethodNotAllowedError(APIStatusError):
    """405 `method_not_allowed`: the route exists but not with this HTTP method (a client newer or
    older than the gateway)."""


class ConflictError(APIStatusError):
    """409: the resource's state forbids this (e.g. cancelling a finished job, a duplicate name)."""


class PayloadTooLargeError(APIStatusError):
    """413: the body, an image, the number of inputs or a text is over the gateway's limit."""


class UnsupportedMediaTypeError(APIStatusError):
    """415: a content type the model does not take, or bytes that are not what they claim."""


class RateLimitError(APIStatusError):
    """429: rate limit or quota exceeded; `retry_after` says when to come back."""


class ServiceUnavailableError(APIStatusError):
    """503: the gateway cannot serve this now; `retry_after` says when to come back."""


class ModelUnavailableError(ServiceUnavailableError):
    """503 `model_unavailable`: the model could not be loaded."""


class OverloadedError(ServiceUnavailableError):
    """503 `overloaded`: the model's queue is full."""


class DeadlineExceededError(APIStatusError):
    """504 `timeout`: the request's deadline passed before it ran."""


class InternalServerError(APIStatusError):
    """Any other 5xx: a gateway bug or a proxy in front of it failing."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidInputError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: DeadlineExceededError,
}
_BY_TYPE: dict[str, type[APIStatusError]] = {
    "invalid_input": InvalidInputError,
    "model_unavailable": ModelUnavailableError,
    "overloaded": OverloadedError,
    "queue_full": OverloadedError,
}


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The typed exception for an error answer, read from the gateway's one error shape
    (or from the status alone when a proxy answered with something else)."""
    status = response.status_code
    body: Any = None
    error_type, message, request_id = "", "", None
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        error_type = str(error.get("type") or "")
        message = str(error.get("message") or "")
        request_id = error.get("request_id")
    if not message:
        message = (body if isinstance(body, str) and body else response.reason_phrase) or "error"
        message = message[:500]
    request_id = request_id or response.headers.get("x-request-id")
    cls = _BY_TYPE.get(error_type) or _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(
        message,
        status_code=status,
        type=error_type or f"http_{status}",
        request_id=str(request_id) if request_id else None,
        retry_after=parse_retry_after(response.headers),
        body=body,
    )


def unexpected_answer(response: httpx.Response, cause: Exception) -> APIStatusError:
    """A success status whose body is not what the API promises (a proxy page, a version skew)."""
    return APIStatusError(
        f"unexpected answer from {response.request.method} {response.request.url.path}: {cause!r}",
        status_code=response.status_code,
        type="invalid_response",
        request_id=response.headers.get("x-request-id"),
        body=response.text[:500],
    )


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    """The typed exception for a transport failure (no answer from the gateway)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer in time: {exc!r}", type="timeout")
    return APIConnectionError(f"could not talk to the gateway: {exc!r}", type="connection_error")
