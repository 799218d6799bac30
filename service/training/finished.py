"""The models fine-tuning jobs finished, registered with the model registry: every one at start-up
(they survive restarts), and on demand those that other replicas finished since (replicas share
the database and the data directory)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from service.db.models import FineTuneJob
from service.serving.registry import ModelRegistry
from service.training.store import FineTuneStore

log = logging.getLogger(__name__)

FINE_TUNED_PREFIX = "ft-"


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """`ft-<base>-<suffix>-<8 hex of the job id>`: URL-safe, unique, at most 64 characters."""
    short = job_id.rsplit("_", 1)[-1][:8]
    clean = re.sub(r"[^a-z0-9]+", "-", (suffix or "").lower()).strip("-")[:20]
    head = f"{FINE_TUNED_PREFIX}{base[: 64 - len(short) - len(clean) - 6]}"
    return "-".join(part for part in (head, clean, short) if part)


def models_dir(data_dir: Path) -> Path:
    """Where fine-tuned models are saved, one folder each."""
    return data_dir / "models"


class FinishedModels:
    """Finds succeeded jobs' models in the database and registers them in a registry."""

    def __init__(self, store: FineTuneStore, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir
        self._missing: set[str] = set()  # fine-tuned models whose folder this replica cannot see

    def register_all(self, registry: ModelRegistry) -> None:
        """Register the model of every succeeded job (at start-up)."""
        for job in self.store.succeeded():
            self._register(registry, job)

    async def discover(self, registry: ModelRegistry, tenant_id: str | None, model: str | None) -> None:
        """Register the models other replicas finished since this one started: the tenant's (None:
        all), or only the one named `model`."""
        if model is not None and (model in registry.entries or not model.startswith(FINE_TUNED_PREFIX)):
            return  # known, or not a fine-tuned name: no database read
        jobs = await asyncio.to_thread(self.store.succeeded, tenant_id=tenant_id, model=model)
        for job in jobs:  # on the event loop: registering never races the routes reading the registry
            if job.base_model not in registry.entries:
                # trained from a fine-tuned model (of the same tenant): its base first, which it
                # inherits its price, batching and allow-list root from
                await self.discover(registry, job.tenant_id, job.base_model)
            self._register(registry, job)

    def _register(self, registry: ModelRegistry, job: FineTuneJob) -> None:
        name = job.fine_tuned_model
        assert name is not None
        if name in registry.entries:
            return
        folder = models_dir(self.data_dir) / name
        if not folder.is_dir():
            if name in self._missing:
                return
            self._missing.add(name)  # said once, not on every listing
            log.warning(
                "fine-tuned model %s: job %s succeeded but %s is missing here; replicas must share "
                "MAAS_DATA_DIR (a ReadWriteMany volume)",
                name,
                job.id,
                folder,
            )
            return
        registry.add_fine_tuned(name, folder, job.tenant_id, job.base_model)
