"""Models registered at run time through the admin API: their rows (the database is the truth)
and the sync that makes this replica's registry match them.

Every replica syncs every `MAAS_MODEL_SYNC_S` seconds, and at once when poked (a change made
here, or one another replica announced over Redis). A sync adds new registrations and starts
loading them (where they fit without evicting another model), reloads changed ones where the
change needs it, unloads and loads as a new or changed registration asks, and drains then drops
deleted ones. Manifests in the models folder are the defaults: a registration never takes a
folder model's (or a fine-tuned model's) name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import RegisteredModel
from service.errors import Conflict, InvalidInput, NotFound
from service.serving.manifests import ModelManifest, Price, parse_manifest
from service.serving.status import ModelStatus

if TYPE_CHECKING:
    from service.serving.registry import ModelRegistry

log = logging.getLogger(__name__)

# what a change may touch without a reload: the rest (source, replicas, batching, …) reloads
LIVE_FIELDS = {"price", "description", "preload", "pinned"}


@dataclass(frozen=True)
class Registration:
    """One registered model, as its row says."""

    manifest: ModelManifest
    loaded: bool  # wanted resident
    created_at: datetime
    updated_at: datetime  # its version: a replica whose copy is older applies the change

    @property
    def name(self) -> str:
        return self.manifest.name

    @classmethod
    def of(cls, row: RegisteredModel) -> Registration:
        return cls(parse_manifest(row.manifest, row.name), row.loaded, row.created_at, row.updated_at)


class Registrations:
    """The `registered_models` table."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def active(self) -> list[Registration]:
        """Every registration not deleted (rows that no longer validate are logged and skipped)."""
        with self._sessions() as session:
            rows = session.scalars(select(RegisteredModel).where(RegisteredModel.deleted_at.is_(None)))
            found = []
            for row in rows:
                try:
                    found.append(Registration.of(row))
                except ValueError as exc:
                    log.warning("registered model %s skipped: %s", row.name, exc)
            return found

    def create(self, manifest: ModelManifest) -> Registration:
        """Register `manifest` (409 if a registration of that name exists)."""
        try:
            return self._create(manifest)
        except IntegrityError:  # another replica registered the same name at the same moment
            raise Conflict(f"model {manifest.name!r} is already registered") from None

    def _create(self, manifest: ModelManifest) -> Registration:
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = session.get(RegisteredModel, manifest.name, with_for_update=True)
            if row is not None and row.deleted_at is None:
                raise Conflict(f"model {manifest.name!r} is already registered")
            if row is None:
                row = RegisteredModel(name=manifest.name, created_at=now)
                session.add(row)
            row.manifest, row.loaded = manifest.model_dump(mode="json"), True
            row.created_at, row.updated_at, row.deleted_at = now, now, None
            session.flush()
            return Registration.of(row)

    def update(self, name: str, changes: dict[str, Any]) -> Registration:
        """Apply `changes` (manifest fields) to the registration `name`, validated as a whole."""
        with self._sessions.begin() as session:
            row = self._row(session, name)
            try:
                manifest = parse_manifest({**row.manifest, **changes}, "manifest")
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc
            row.manifest, row.updated_at = manifest.model_dump(mode="json"), datetime.now(UTC)
            session.flush()
            return Registration.of(row)

    def set_loaded(self, name: str, loaded: bool) -> Registration:
        with self._sessions.begin() as session:
            row = self._row(session, name)
            row.loaded, row.updated_at = loaded, datetime.now(UTC)
            session.flush()
            return Registration.of(row)

    def delete(self, name: str) -> None:
        with self._sessions.begin() as session:
            row = self._row(session, name)
            row.deleted_at = row.updated_at = datetime.now(UTC)

    def _row(self, session: Session, name: str) -> RegisteredModel:
        row = session.get(RegisteredModel, name, with_for_update=True)
        if row is None or row.deleted_at is not None:
            raise NotFound(f"registered model {name!r} not found")
        return row


class ModelSync:
    """Makes `registry` match the registrations, on a timer and whenever poked."""

    def __init__(
        self,
        registrations: Registrations,
        registry: ModelRegistry,
        *,
        interval_s: float,
        on_price: Callable[[str, Price], object] = lambda name, price: None,
    ) -> None:
        self.registrations = registrations
        self.registry = registry
        self.interval_s = interval_s
        self.on_price = on_price  # a registered model's price is new or changed (the price book)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one sync at a time
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def poke(self) -> None:
        """Sync soon (a change was announced)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maas-model-sync")

    async def close(self) -> None:
        """Stop after the sync in progress, if any: cancelling it would leave its database
        session in a worker thread, holding a connection past the engine's disposal."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.sync()
            except (SQLAlchemyError, OSError) as exc:  # the database is down: the next round retries
                log.warning("model sync failed (%s); retrying in %.1fs", type(exc).__name__, self.interval_s)

    async def sync(self) -> None:
        """Apply every registration's current state to this replica's registry."""
        async with self._lock:
            found = await asyncio.to_thread(self.registrations.active)
            await self._apply(found)

    async def _apply(self, found: list[Registration]) -> None:
        wanted = {r.name: r for r in found}
        for entry in self.registry.list():
            if entry.version is not None and entry.name not in wanted:
                log.info("model %s deleted: draining", entry.name)
                await self.registry.remove(entry.name)
        for registration in found:
            await self._apply_one(registration)

    async def _apply_one(self, found: Registration) -> None:
        entry = self.registry.entries.get(found.name)
        if entry is not None and entry.version is None:
            log.warning("registered model %s ignored: a manifest file or fine-tune has that name", found.name)
            return
        new = entry is None
        changed = entry is not None and entry.version != found.updated_at
        if entry is None or (changed and _needs_reload(entry.manifest, found.manifest)):
            if entry is not None:
                await self.registry.remove(found.name)  # drains it first
            entry = self.registry.add_registered(found.manifest, found.updated_at, found.created_at)
            await asyncio.to_thread(self.on_price, found.name, found.manifest.price)
        elif changed:
            if entry.manifest is not None and entry.manifest.price != found.manifest.price:
                await asyncio.to_thread(self.on_price, found.name, found.manifest.price)
            entry.manifest, entry.version = found.manifest, found.updated_at
        # `loaded` is applied when the registration is new or changed, not on every pass: a model
        # evicted for memory (or unloaded, then used again) stays as residency left it
        if not (new or changed):
            return
        if not found.loaded:
            if entry.status is not ModelStatus.UNLOADED:
                await self.registry.unload(entry)
        elif new:  # loads at once if it says `preload` and fits without evicting another model
            if entry.status is ModelStatus.NOT_LOADED and found.manifest.preload:
                self.registry.start_loading(entry, make_room=False)
        elif entry.status in (ModelStatus.NOT_LOADED, ModelStatus.UNLOADED, ModelStatus.UNAVAILABLE):
            self.registry.start_loading(entry)  # changed (e.g. asked to load): loads at once


def _needs_reload(old: ModelManifest | None, new: ModelManifest) -> bool:
    if old is None:
        return True
    return old.model_dump(exclude=LIVE_FIELDS) != new.model_dump(exclude=LIVE_FIELDS)
