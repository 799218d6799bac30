"""`maas serve`: the gateway under uvicorn until SIGINT/SIGTERM, then a graceful drain."""

from __future__ import annotations

from types import FrameType

from service.cli.header_timeout import header_timeout_protocol
from service.observability.logs import configure_logging
from service.settings import Settings


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM; then stop accepting, finish queued work, exit."""
    import uvicorn

    from service.app import begin_draining, create_app

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            begin_draining(app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configure_logging routes uvicorn's loggers
        access_log=False,  # service/observability/middleware.py writes one richer line per request
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    DrainingServer(config).run()
