"""The registry: every manifest listed, bad ones unavailable with a reason, preload and lazy load."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ModelUnavailable, NotFound
from service.observability.metrics import Metrics
from service.serving.devices import DevicePool
from service.serving.registry import ModelRegistry, ModelStatus
from tests.conftest import write_manifest

pytestmark = pytest.mark.anyio


@pytest.fixture
def registry(models_dir: Path, tiny_vit_dir: Path) -> ModelRegistry:
    write_manifest(
        models_dir,
        "lazy",
        f"""
        name: lazy
        task: image-classification
        source: {tiny_vit_dir}
        preload: false
        replicas: 2
    """,
    )
    (models_dir / "broken.yaml").write_text("name: [unclosed\n")
    write_manifest(
        models_dir,
        "typo",
        """
        name: typo
        task: image-classification
        source: x
        dtyp: float16
    """,
    )
    registry = ModelRegistry(models_dir, DevicePool.from_spec("cpu"), Metrics())
    registry.discover()
    return registry


async def test_preload_loads_preload_models_and_marks_the_rest(registry: ModelRegistry) -> None:
    await registry.preload()
    status = {e.name: e.status for e in registry.list()}
    assert status == {
        "broken": ModelStatus.UNAVAILABLE,
        "lazy": ModelStatus.NOT_LOADED,
        "missing": ModelStatus.UNAVAILABLE,
        "tiny-vit": ModelStatus.READY,
        "typo": ModelStatus.UNAVAILABLE,
    }
    assert registry.preload_done.is_set()
    assert "dtyp" in (registry.get("typo").reason or "")
    assert "no-such-folder" in (registry.get("missing").reason or "")
    described = registry.get("tiny-vit").describe()
    assert described["status"] == "ready" and described["labels"] == 3 and described["load_seconds"] > 0


async def test_a_lazy_model_loads_on_first_use_with_all_its_replicas(registry: ModelRegistry) -> None:
    entry = await registry.ensure_loaded(registry.get("lazy"))
    assert entry.status is ModelStatus.READY and len(entry.replicas) == 2
    assert entry.describe()["devices"] == ["cpu", "cpu"]


async def test_unavailable_and_unknown_models_raise_their_http_errors(registry: ModelRegistry) -> None:
    with pytest.raises(ModelUnavailable, match="no-such-folder"):
        await registry.ensure_loaded(registry.get("missing"))
    with pytest.raises(NotFound):
        registry.get("never-heard-of-it")


async def test_metrics_record_load_time_and_readiness(registry: ModelRegistry) -> None:
    await registry.preload()
    text = registry.metrics.render().decode()
    assert 'maas_model_ready{model="tiny-vit"} 1.0' in text
    assert 'maas_model_ready{model="missing"} 0.0' in text
    assert 'maas_model_load_seconds{model="tiny-vit"}' in text
