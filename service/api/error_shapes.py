"""Errors in another protocol's shape. The gateway's own routes answer errors as
`{"error": {"type", "message", "request_id"}}` (service/errors.py); the routes of a protocol
that clients already speak (OpenAI's, the Open Inference Protocol's) answer them in that
protocol's shape instead: every error raised while such a route runs, its dependencies (the key)
included, is the same `GatewayError` with the same status and headers, only drawn differently."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import GatewayError, error_headers, framework_error

log = logging.getLogger(__name__)


# What each error status of an inference route means, whichever shape it is drawn in.
INFERENCE_ERRORS = {
    400: "Malformed request.",
    401: "Missing or unknown API key.",
    403: "The key may not use this model (or lacks the inference scope).",
    404: "No such model (or another tenant's).",
    413: "Body, image or input count over the limits.",
    415: "Unsupported image type.",
    422: "An input or parameter is invalid (the message says which).",
    429: "Rate limit, quota or in-flight cap; see Retry-After.",
    503: "Model unavailable or its queue full; see Retry-After.",
    504: "The request's deadline passed before it ran.",
}


@dataclass(frozen=True)
class ErrorShape:
    """A protocol's error body: `body(error)` is the JSON its clients parse, described by `model`."""

    body: Callable[[GatewayError], dict[str, Any]]
    model: type[BaseModel]

    def responses(self, statuses: Iterable[int] = INFERENCE_ERRORS) -> dict[int | str, dict[str, Any]]:
        """The error answers of a route, for its OpenAPI description."""
        return {s: {"model": self.model, "description": INFERENCE_ERRORS[s]} for s in statuses}

    def response(self, request: Request, error: GatewayError) -> JSONResponse:
        return JSONResponse(
            self.body(error), status_code=error.status_code, headers=error_headers(request, error)
        )

    def route_class(self) -> type[APIRoute]:
        """A route class (for `APIRouter(route_class=...)`) whose errors are drawn in this shape."""
        shape = self

        class ShapedRoute(APIRoute):
            # read by the app's handler of errors raised before the route runs (a 405)
            render_error = staticmethod(shape.response)

            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()

                async def handle(request: Request) -> Response:
                    try:
                        return await handler(request)
                    except GatewayError as exc:
                        return shape.response(request, exc)
                    except (StarletteHTTPException, RequestValidationError) as exc:
                        response = shape.response(request, framework_error(exc))
                        if isinstance(exc, StarletteHTTPException):
                            response.status_code = exc.status_code
                        return response
                    except Exception:
                        log.exception("unhandled error on %s %s", request.method, request.url.path)
                        error = GatewayError("internal error; the request id identifies it in the logs")
                        return shape.response(request, error)

                return handle

        return ShapedRoute
