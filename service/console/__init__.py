"""The web console at `/console`: static files (HTML, CSS, plain JavaScript; no build step, no
library) that sign in with an API key and call the gateway's public HTTP API like any client.
Every answer carries a strict Content-Security-Policy: scripts, styles and requests from this
origin only, nothing inline, never framed (docs/console.md)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

CONSOLE_URL = "/console"
STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",  # the playground's preview of the picked image
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag), so an upgraded gateway serves its own console
}


class ConsoleFiles(StaticFiles):
    """The console's files, each answer with the console's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console at `/console/` (`/console` redirects there); not part of the API schema."""
    app.mount(CONSOLE_URL, ConsoleFiles(directory=STATIC, html=True), name="console")
