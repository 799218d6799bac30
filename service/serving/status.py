"""A model's status, as the API shows it: its own module, free of torch, so that processes that
never hold a model (the `maas` command, the supervisor over the workers) need not load torch."""

from __future__ import annotations

from enum import StrEnum


class ModelStatus(StrEnum):
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADED = "unloaded"  # unloaded on purpose: registered, not resident until loaded again
    UNAVAILABLE = "unavailable"
