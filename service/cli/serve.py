"""`maas serve`: the gateway under uvicorn until SIGINT/SIGTERM, then a graceful drain. With
`MAAS_WORKERS` above 1 (by default one per core), a model process and that many front-end
workers (service/engine/)."""

from __future__ import annotations

import logging
from types import FrameType
from typing import TYPE_CHECKING

from service import heap
from service.cli.header_timeout import header_timeout_protocol
from service.observability.logs import configure_logging
from service.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM; then stop accepting, finish queued work, exit."""
    configure_logging(settings.log_level, settings.log_format)
    workers = settings.resolved_workers
    log.info(
        "MAAS_WORKERS=%s: %s",
        settings.workers,
        f"{workers} front-end workers and a model process" if workers > 1 else "one process",
    )
    if workers > 1:
        from service.engine.processes import serve_workers

        serve_workers(settings.model_copy(update={"workers": workers}))
        return
    from service.app import create_app

    if settings.gc_freeze:  # one process (with several, the model process and each worker do it)
        heap.manage()
    server(settings, create_app(settings)).run()


def server(settings: Settings, app: FastAPI) -> uvicorn.Server:
    """uvicorn serving `app` as the gateway does: SIGTERM first marks it draining (readiness 503),
    then in-flight requests finish within MAAS_DRAIN_TIMEOUT_S."""
    import uvicorn

    from service.app import begin_draining

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            begin_draining(app)
            super().handle_exit(sig, frame)

    return DrainingServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # configure_logging routes uvicorn's loggers
            access_log=False,  # service/observability/middleware.py writes one richer line per request
            timeout_graceful_shutdown=int(settings.drain_timeout_s),
            http=header_timeout_protocol(settings.header_timeout_s),
        )
    )
