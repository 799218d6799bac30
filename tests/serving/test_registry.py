"""The registry: every manifest listed, bad ones unavailable with a reason, preload and lazy load."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from service.errors import ModelUnavailable, NotFound
from service.observability.metrics import Metrics
from service.serving.batching import Batcher
from service.serving.devices import DevicePool
from service.serving.entries import Replica
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


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
async def test_a_cpu_lanes_lone_batch_takes_every_thread_and_side_by_side_ones_one_each() -> None:
    most = torch.get_num_threads()
    seen: list[int] = []
    side_by_side = threading.Barrier(2)

    class Recorder:
        def predict(self, features: list[Any], *, top_k: int) -> list[Any]:
            seen.append(torch.get_num_threads())  # what the forward pass would run on
            if len(features) == 1 and features[0].startswith("pair"):
                side_by_side.wait(timeout=30)
            return list(features)

    pool = ThreadPoolExecutor(2)
    replica = Replica(Recorder(), torch.device("cpu"), pool, pipeline=2, threads=1, alone_threads=most)  # type: ignore[arg-type]
    replica.batcher = Batcher(
        replica.run_batch, pool, max_batch_size=1, max_delay_s=0, pipeline=2, spread=True
    )
    replica.batcher.start()
    assert await replica.batcher.submit("lone", top_k=1) == "lone"
    pair = [replica.batcher.submit(f"pair{i}", top_k=1) for i in range(2)]
    assert await asyncio.wait_for(asyncio.gather(*pair), 30) == ["pair0", "pair1"]
    await replica.batcher.close()
    pool.shutdown(wait=True)
    assert seen == [most, 1, 1]
