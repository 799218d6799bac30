"""OpenTelemetry: the app is instrumented only where the instrumentation package is installed."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.observability.tracing import UNTRACED, instrument
from service.settings import Settings


def test_without_the_package_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", None)  # import fails
    assert instrument(FastAPI()) is False


def test_with_the_package_every_app_is_instrumented_but_probes_are_not_traced(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    calls: list[tuple[FastAPI, dict[str, Any]]] = []

    class FastAPIInstrumentor:
        @staticmethod
        def instrument_app(app: FastAPI, **options: Any) -> None:
            calls.append((app, options))

    fake = types.ModuleType("opentelemetry.instrumentation.fastapi")
    fake.FastAPIInstrumentor = FastAPIInstrumentor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", fake)
    app = create_app(settings)
    assert calls == [(app, {"excluded_urls": UNTRACED})]
    assert set(UNTRACED.split(",")) == {"healthz", "readyz", "metrics"}
