"""One check before any route runs (an app-wide dependency): no path or query parameter may hold
text the database refuses. A NUL byte in a file id, a job id, a tenant's name, `?tenant=` or a
model's name is the caller's mistake, answered 400 here, before it can reach a query or a usage
event (where PostgreSQL would refuse it, and with it a whole group of other requests' events)."""

from __future__ import annotations

from fastapi import Request

from service.bounds import text_problem
from service.errors import InvalidRequest


async def plain_text_parameters(request: Request) -> None:
    """400 if a path or query parameter (its name or its value) holds a NUL byte or a lone surrogate."""
    found = (
        ("path", request.path_params.items()),
        ("query", request.query_params.multi_items()),
    )
    for where, items in found:
        for name, value in items:
            problem = text_problem(str(name)) or text_problem(str(value))
            if problem is not None:
                raise InvalidRequest(f"{where} parameter {name!r} {problem}")
