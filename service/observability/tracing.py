"""Optional OpenTelemetry traces: when `opentelemetry-instrumentation-fastapi` is installed, every
request becomes a span (exported wherever the OpenTelemetry SDK is configured to send them, e.g.
by `opentelemetry-instrument maas serve` and the standard OTEL_* variables); otherwise nothing."""

from __future__ import annotations

import logging

from fastapi import FastAPI

log = logging.getLogger(__name__)

UNTRACED = "healthz,readyz,metrics"  # probes and scrapes would drown the traces


def instrument(app: FastAPI) -> bool:
    """Trace `app`'s requests if the instrumentation package is installed; whether it was."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        return False
    FastAPIInstrumentor.instrument_app(app, excluded_urls=UNTRACED)
    log.info("OpenTelemetry: tracing requests")
    return True
