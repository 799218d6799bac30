"""LoRA fine-tunes served over one resident base, through the HTTP API in-process: each tenant's
fine-tune answers what its adapter merged into a copy of the base answers, privately; requests for
different fine-tunes share the base's forward passes; an adapter leaves after its queued inputs
are answered, and leaves with its base."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import UsageEvent
from service.serving import lora
from service.serving.entries import ModelEntry
from service.serving.registry import ModelRegistry
from service.serving.residency import MB
from service.serving.status import ModelStatus
from service.settings import Settings
from tests.api.test_residency import vit_bytes
from tests.conftest import ADMIN_KEY, Gateway, image_bytes, write_manifest
from tests.lora_adapters import save_lora_adapter

pytestmark = pytest.mark.anyio
FINE_TUNES = {  # name: (tenant, labels)
    "ft-tiny-vit-shapes": ("acme", ["circle", "square"]),
    "ft-tiny-vit-moods": ("acme", ["calm", "busy", "odd", "loud"]),
    "ft-tiny-vit-tints": ("globex", ["warm", "cool", "grey"]),
}
RED = image_bytes(color=(200, 30, 30))


@dataclass
class Served:
    app: Gateway
    registry: ModelRegistry
    keys: dict[str, str]  # tenant -> key
    folders: dict[str, Path]  # fine-tune -> its adapter folder

    def client(self, tenant: str) -> httpx.AsyncClient:
        return self.app.client(self.keys[tenant])

    def entry(self, name: str) -> ModelEntry:
        return self.registry.get(name)


@pytest.fixture
async def served(settings: Settings, tiny_vit_dir: Path) -> AsyncIterator[Served]:
    """The gateway with three LoRA fine-tunes of `tiny-vit` (two of acme's, one of globex's),
    registered as a finished fine-tuning job registers its model, and each adapter merged into
    its own copy of the base too, as the public model `merged-<fine-tune>`."""
    # float32 (`auto` may pick bfloat16 on this CPU): merged and unmerged agree to float32's rounding
    lines = ["name: tiny-vit", "task: image-classification", f"source: {tiny_vit_dir}", "dtype: float32"]
    lines += ["price: {per_image: 0.001}"]  # what its fine-tunes inherit
    write_manifest(settings.models_dir, "tiny-vit", "\n".join(lines))
    folders = {}
    for n, (name, (_, labels)) in enumerate(FINE_TUNES.items()):
        folders[name] = save_lora_adapter(tiny_vit_dir, settings.data_dir / "models" / name, labels, seed=n)
        lines = [f"name: merged-{name}", "task: image-classification", "dtype: float32"]
        lines += [f"source: {folders[name]}", f"base_source: {tiny_vit_dir}"]
        write_manifest(settings.models_dir, f"merged-{name}", "\n".join(lines))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        gateway = Gateway(app)
        registry: ModelRegistry = app.state.gateway.registry
        await registry.preload_done.wait()
        keys = {}
        async with gateway.client() as admin:
            for tenant in ("acme", "globex"):
                made = await admin.post("/v1/admin/tenants", json={"name": tenant})
                key = await admin.post(f"/v1/admin/tenants/{tenant}/keys", json={})
                keys[tenant] = key.json()["key"]
                for name, (owner, _) in FINE_TUNES.items():
                    if owner == tenant:
                        registry.add_fine_tuned(name, folders[name], made.json()["id"], "tiny-vit")
        yield Served(gateway, registry, keys, folders)


async def predict(http: httpx.AsyncClient, model: str) -> httpx.Response:
    return await http.post(f"/v1/models/{model}/predict", content=RED, headers={"Content-Type": "image/png"})


def batches_of(metrics: str, model: str) -> tuple[float, float]:
    """The base's batches so far: (how many, inputs in them)."""
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.labels.get("model") == model and sample.name.startswith("maas_batch_size_")
    }
    return found["maas_batch_size_count"], found["maas_batch_size_sum"]


class HeldThread:
    """Holds a replica's thread (its batches wait) until released."""

    def __init__(self, entry: ModelEntry) -> None:
        self.release = threading.Event()
        self.done = entry.replicas[0].executor.submit(self.release.wait)

    async def queued(self, entry: ModelEntry, inputs: int) -> None:
        batcher = entry.replicas[0].batcher
        assert batcher is not None
        while batcher.load < inputs:  # a condition polled, not a timing assumption
            await asyncio.sleep(0.01)


async def test_fine_tunes_answer_as_merged_privately_and_share_forward_passes(served: Served) -> None:
    base = served.entry("tiny-vit")
    async with served.client("acme") as acme, served.client("globex") as globex:
        for name, (tenant, _) in FINE_TUNES.items():
            answer = await predict(acme if tenant == "acme" else globex, name)
            assert answer.status_code == 200, answer.text
            async with served.app.client() as admin:
                want = (await predict(admin, f"merged-{name}")).json()["predictions"][0]
            got = answer.json()["predictions"][0]
            assert [p["label"] for p in got] == [p["label"] for p in want]
            assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)
            assert served.entry(f"merged-{name}").batchers != base.batchers  # a copy of its own
            assert served.entry(name).batchers == base.batchers  # the base's one batcher, no copy

        assert (await predict(globex, "ft-tiny-vit-shapes")).status_code == 404  # acme's
        assert (await predict(acme, "ft-tiny-vit-tints")).status_code == 404  # globex's
        listed = {m["id"] for m in (await acme.get("/v1/models")).json()["data"]}
        assert {"ft-tiny-vit-shapes", "ft-tiny-vit-moods"} <= listed and "ft-tiny-vit-tints" not in listed

        async with served.app.client() as admin:
            before = batches_of((await admin.get("/metrics")).text, "tiny-vit")
            held = HeldThread(base)
            calls: list[Awaitable[httpx.Response]] = [
                predict(globex, "ft-tiny-vit-tints"),
                predict(acme, "tiny-vit"),
            ]
            calls += [predict(acme, "ft-tiny-vit-shapes"), predict(acme, "ft-tiny-vit-moods")]
            answers = asyncio.gather(*calls)
            await held.queued(base, 4)
            held.release.set()
            assert all(a.status_code == 200 for a in await answers)
            after = batches_of((await admin.get("/metrics")).text, "tiny-vit")
        # four inputs for four models ran in at most two forward passes (one waited behind the held thread)
        assert after[1] - before[1] == 4 and after[0] - before[0] <= 2

    sessions: sessionmaker[Session] = served.app.app.state.gateway.sessions
    with sessions() as session:  # each fine-tune metered under its own name, to its own tenant
        events = list(session.scalars(select(UsageEvent).where(UsageEvent.model.like("ft-%"))))
    answered = [e for e in events if e.status == 200]
    assert {e.model for e in answered} == set(FINE_TUNES) and all(e.amount_micro == 1000 for e in answered)


async def test_an_adapter_leaves_after_its_queued_inputs_and_the_others_stay(served: Served) -> None:
    base, shapes = served.entry("tiny-vit"), served.entry("ft-tiny-vit-shapes")
    async with served.client("acme") as acme:
        assert (await predict(acme, "ft-tiny-vit-moods")).status_code == 200
        assert (await predict(acme, "ft-tiny-vit-shapes")).status_code == 200
        held = HeldThread(base)
        queued = asyncio.ensure_future(predict(acme, "ft-tiny-vit-shapes"))
        await held.queued(base, 1)
        assert lora.in_use(base)  # what residency asks before evicting the base
        unloading = asyncio.ensure_future(served.registry.unload(shapes))
        await asyncio.sleep(0)
        assert not unloading.done()
        held.release.set()
        answer, _ = await asyncio.gather(queued, unloading)
        assert answer.status_code == 200, answer.text  # answered before its adapter left
        assert answer.json()["predictions"][0][0]["label"] in FINE_TUNES["ft-tiny-vit-shapes"][1]
        assert shapes.status is ModelStatus.UNLOADED and not lora.in_use(base)
        host = base.replicas[0].lora
        assert host is not None and "ft-tiny-vit-shapes" not in host.names
        assert (await predict(acme, "ft-tiny-vit-moods")).status_code == 200
        assert (await predict(acme, "tiny-vit")).status_code == 200
        assert (await predict(acme, "ft-tiny-vit-shapes")).status_code == 200  # loads again on use
        assert "ft-tiny-vit-shapes" in host.names and shapes.batchers == base.batchers


async def test_adapters_leave_with_their_base_and_come_back_with_it(served: Served) -> None:
    base, moods = served.entry("tiny-vit"), served.entry("ft-tiny-vit-moods")
    async with served.client("acme") as acme:
        assert (await predict(acme, "ft-tiny-vit-moods")).status_code == 200
        await served.registry.unload(base)
        assert moods.status is ModelStatus.NOT_LOADED and not moods.replicas and not base.adapters
        again = await predict(acme, "ft-tiny-vit-moods")  # its base loads again, then it over it
        assert again.status_code == 200, again.text
        assert moods.batchers == base.batchers and base.replicas[0].lora is not None


async def test_an_adapter_the_banks_cannot_hold_is_served_merged(served: Served, tiny_vit_dir: Path) -> None:
    folder = save_lora_adapter(
        tiny_vit_dir, served.folders["ft-tiny-vit-shapes"].parent / "odd", ["x", "y"], seed=9
    )
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    config["rank_pattern"] = {"q_proj": 4}  # the rank it has: PEFT loads it, the banks do not model it
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    owner = served.entry("ft-tiny-vit-shapes").owner
    assert owner is not None
    odd = served.registry.add_fine_tuned("ft-tiny-vit-odd", folder, owner, "tiny-vit")
    async with served.client("acme") as acme:
        answer = await predict(acme, "ft-tiny-vit-odd")
    assert answer.status_code == 200, answer.text
    assert {p["label"] for p in answer.json()["predictions"][0]} == {"x", "y"}
    assert odd.served_over is None and odd.batchers != served.entry("tiny-vit").batchers  # its own copy


async def test_a_base_whose_fine_tunes_are_in_use_is_not_evicted(tmp_path: Path, tiny_vit_dir: Path) -> None:
    """Under a memory budget that fits one tiny ViT: while a fine-tune is in use (held, as by a
    batch job), another model cannot evict its base (its request's deadline passes waiting for room); once
    idle, the base is evicted with its adapters, and the fine-tune's next request brings both back."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("tiny-vit", "other"):
        write_manifest(models, name, f"name: {name}\ntask: image-classification\nsource: {tiny_vit_dir}\n")
    size = vit_bytes(tiny_vit_dir)
    settings = Settings(
        models_dir=models,
        data_dir=tmp_path / "var",
        admin_key=ADMIN_KEY,
        devices="cpu",
        device_memory_mb=1.5 * size / MB,
    )
    folder = save_lora_adapter(
        tiny_vit_dir, tmp_path / "var" / "models" / "ft-tiny-vit-x", ["a", "b"], seed=0
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app), Gateway(app).client() as admin:
        registry: ModelRegistry = app.state.gateway.registry
        await registry.preload_done.wait()
        base = registry.get("tiny-vit")
        fine_tune = registry.add_fine_tuned("ft-tiny-vit-x", folder, "some-tenant", "tiny-vit")
        fine_tune.owner = None  # public here: the admin key calls it
        assert (await predict(admin, "ft-tiny-vit-x")).status_code == 200
        with registry.residency.hold(fine_tune):  # as a batch job on the fine-tune holds it
            hurried = await admin.post(
                "/v1/models/other/predict",
                content=RED,
                headers={"Content-Type": "image/png", "X-Request-Timeout-Ms": "300"},
            )
            assert hurried.status_code == 504, hurried.text  # the base was not evicted under its fine-tune
        assert (await predict(admin, "other")).status_code == 200  # now the idle base makes room
        assert base.status is ModelStatus.UNLOADED and fine_tune.status is ModelStatus.NOT_LOADED
        assert (await predict(admin, "ft-tiny-vit-x")).status_code == 200  # base and adapter back
        assert fine_tune.batchers == base.batchers and registry.get("other").status is ModelStatus.UNLOADED
