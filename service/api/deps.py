"""Request-scoped inputs of the routes, as `Annotated` aliases in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import Principal, authenticate
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


Caller = Annotated[Principal, Depends(authenticate)]
Registry = Annotated[ModelRegistry, Depends(_registry)]
AppSettings = Annotated[Settings, Depends(_settings)]
AppMetrics = Annotated[Metrics, Depends(_metrics)]
