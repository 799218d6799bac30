"""A replica finds the fine-tuned models other replicas finished (shared database and data
directory): by name on first use, the tenant's on a listing; never another tenant's, and not
when its data directory lacks the model's folder (SQLite and, when available, PostgreSQL)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.errors import NotFound
from service.observability.metrics import Metrics
from service.serving.devices import DevicePool
from service.serving.registry import ModelRegistry, ModelStatus
from service.settings import Settings
from service.tenancy.principal import Principal
from service.tenancy.tenants import Tenants
from service.training.finished import FinishedModels
from service.training.store import FineTuneStore, JobSpec

pytestmark = pytest.mark.anyio
SPEC = JobSpec(
    "tiny-vit", "file_x", None, {"epochs": 1, "learning_rate": 0.001, "batch_size": 4}, "full", None
)


def caller(tenant_id: str) -> Principal:
    return Principal(key_id="key_x", tenant="t", scopes=frozenset({"inference"}), tenant_id=tenant_id)


def finished_elsewhere(store: FineTuneStore, tenant_id: str, name: str, base: str = "tiny-vit") -> None:
    """What another replica's runner leaves: a succeeded job naming its model."""
    job = store.create_job(tenant_id, dataclasses.replace(SPEC, base_model=base), None)
    claimed = store.claim("replica-b", lease_s=60)
    assert claimed is not None and claimed.id == job.id
    assert store.finish(job.id, "replica-b", "succeeded", "done", fine_tuned_model=name)


def this_replica(
    sessions: sessionmaker[Session], models_dir: Path, data_dir: Path
) -> tuple[Settings, FineTuneStore, ModelRegistry]:
    """A replica's settings, job store and registry, finding other replicas' models on demand."""
    settings = Settings(models_dir=models_dir, data_dir=data_dir, devices="cpu")
    store = FineTuneStore(sessions, settings.data_dir)
    finished = FinishedModels(store, settings.data_dir)
    registry = ModelRegistry(models_dir, DevicePool.from_spec("cpu"), Metrics(), finder=finished)
    registry.discover()
    return settings, store, registry


async def test_a_model_finished_by_another_replica_is_found_by_its_tenant_only(
    sessions: sessionmaker[Session], tmp_path: Path, models_dir: Path, tiny_vit_dir: Path
) -> None:
    settings, store, registry = this_replica(sessions, models_dir, tmp_path / "shared")
    tenants = Tenants(sessions)
    acme, other = tenants.ensure_tenant("acme").id, tenants.ensure_tenant("other").id
    name = "ft-tiny-vit-colours-0a1b2c3d"
    shutil.copytree(tiny_vit_dir, settings.data_dir / "models" / name)  # on the shared volume
    finished_elsewhere(store, acme, name)

    with pytest.raises(NotFound):
        await registry.find_for(caller(other), name)  # another tenant: not even registered
    assert name not in registry.entries
    entry = await registry.find_for(caller(acme), name)
    assert entry.owner == acme and entry.status is ModelStatus.NOT_LOADED  # loads on first predict
    assert entry.manifest is not None and entry.manifest.price.per_image == 0.001  # its base's price
    with pytest.raises(NotFound):
        await registry.find_for(caller(other), name)

    second = "ft-tiny-vit-more-4e5f6a7b"
    shutil.copytree(tiny_vit_dir, settings.data_dir / "models" / second)
    finished_elsewhere(store, acme, second)
    assert second in [e.name for e in await registry.list_for(caller(acme))]
    assert second not in [e.name for e in await registry.list_for(caller(other))]


async def test_a_model_whose_folder_this_replica_cannot_see_is_not_served_and_said_once(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    models_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, store, registry = this_replica(sessions, models_dir, tmp_path / "own")
    acme = Tenants(sessions).ensure_tenant("acme").id
    name = "ft-tiny-vit-elsewhere-0a1b2c3d"
    finished_elsewhere(store, acme, name)  # its folder is on another replica's disk

    with caplog.at_level(logging.WARNING, logger="service.training.runner"):
        for _ in range(3):
            with pytest.raises(NotFound):
                await registry.find_for(caller(acme), name)
            await registry.list_for(caller(acme))
    warnings = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1 and "MAAS_DATA_DIR" in warnings[0], warnings


async def test_a_model_trained_from_another_fine_tuned_one_is_found_with_its_base_first(
    sessions: sessionmaker[Session], tmp_path: Path, models_dir: Path, tiny_vit_dir: Path
) -> None:
    settings, store, registry = this_replica(sessions, models_dir, tmp_path / "shared")
    acme = Tenants(sessions).ensure_tenant("acme").id
    first, second = "ft-tiny-vit-first-0a1b2c3d", "ft-ft-tiny-vit-first-second-4e5f6a7b"
    for name in (first, second):
        shutil.copytree(tiny_vit_dir, settings.data_dir / "models" / name)
    finished_elsewhere(store, acme, first)
    finished_elsewhere(store, acme, second, base=first)  # fine-tuned from the first

    entry = await registry.find_for(caller(acme), second)
    assert first in registry.entries  # registered on the way
    assert entry.base_model == "tiny-vit"  # allow-lists naming the public root allow it
    assert entry.manifest is not None and entry.manifest.price.per_image == 0.001  # the root's price
    only_root = Principal(
        key_id="key_x",
        tenant="t",
        scopes=frozenset({"inference"}),
        tenant_id=acme,
        models=frozenset({"tiny-vit"}),
    )
    assert registry.get_for(only_root, second) is entry


def test_models_finished_in_a_chain_are_registered_again_at_start_up_bases_first(
    sessions: sessionmaker[Session], tmp_path: Path, models_dir: Path, tiny_vit_dir: Path
) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "shared", devices="cpu")
    store = FineTuneStore(sessions, settings.data_dir)
    acme = Tenants(sessions).ensure_tenant("acme").id
    chain = ["ft-tiny-vit-a-0a1b2c3d", "ft-ft-tiny-vit-a-b-4e5f6a7b", "ft-ft-ft-tiny-vit-a-b-c-8c9d0e1f"]
    jobs = {}
    for base, name in reversed(list(zip(["tiny-vit", *chain], chain, strict=False))):
        # stored derived-first (as rows may come back in any order), finished bases-first (as they must)
        shutil.copytree(tiny_vit_dir, settings.data_dir / "models" / name)
        jobs[name] = store.create_job(acme, dataclasses.replace(SPEC, base_model=base), None).id
        claimed = store.claim("replica-b", lease_s=60)
        assert claimed is not None and claimed.id == jobs[name]
    for name in chain:
        assert store.finish(jobs[name], "replica-b", "succeeded", "done", fine_tuned_model=name)
    registry = ModelRegistry(models_dir, DevicePool.from_spec("cpu"), Metrics())
    registry.discover()
    FinishedModels(store, settings.data_dir).register_all(registry)
    assert [registry.entries[name].base_model for name in chain] == ["tiny-vit"] * 3
