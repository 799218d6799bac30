"""Fine-tuning from a model another replica fine-tuned: two gateways in one process on one
database and one data directory (as two pods on a shared volume), both started before that model
existed. The API-only one accepts the job (it finds the base on demand), the other's runner trains
it (it finds the base too), and the result is served by both, priced and allowed like the root."""

from __future__ import annotations

import shutil
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import FineTuneJob
from service.settings import Settings
from tests.api.jobs import tenant_key
from tests.api.test_fine_tuning import upload, wait_for
from tests.conftest import Gateway
from tests.training.zips import COLOURS, colour_dataset, png

pytestmark = pytest.mark.anyio


def finished_elsewhere(sessions: sessionmaker[Session], tenant_id: str, name: str, base: str) -> None:
    """What a third replica leaves behind once it fine-tuned `name`: a succeeded job row (written
    whole, so that no runner here can claim it first) and the model folder on the shared volume."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        session.add(
            FineTuneJob(
                id="ftjob_elsewhere0123456789abcdef",
                tenant_id=tenant_id,
                base_model=base,
                method="full",
                training_file="file_elsewhere",
                hyperparameters={"epochs": 1},
                status="succeeded",
                fine_tuned_model=name,
                created_at=now,
                started_at=now,
                finished_at=now,
            )
        )


async def test_a_job_based_on_a_model_another_replica_fine_tuned_is_accepted_trained_and_served(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    shared = settings.model_copy(update={"database_url": database_url})
    api_only = create_app(shared.model_copy(update={"fine_tune_runner": False}))
    trainer = create_app(shared)
    async with AsyncExitStack() as running:
        for app in (api_only, trainer):
            await running.enter_async_context(app.router.lifespan_context(app))
        front, back = Gateway(api_only), Gateway(trainer)
        async with front.client() as admin:
            key, stranger = await tenant_key(admin, "acme"), await tenant_key(admin, "other")
        acme = api_only.state.gateway.tenants.get_tenant("acme").id
        base = "ft-tiny-vit-elsewhere-0a1b2c3d"
        shutil.copytree(tiny_vit_dir, shared.data_dir / "models" / base)
        finished_elsewhere(api_only.state.gateway.sessions, acme, base, "tiny-vit")
        assert (
            base not in api_only.state.gateway.registry.entries
            and base not in trainer.state.gateway.registry.entries
        )

        async with front.client(key) as mine, front.client(stranger) as theirs:
            file_id = (await upload(mine, colour_dataset(per_label=5))).json()["id"]
            body = {
                "base_model": base,
                "training_file": file_id,
                "hyperparameters": {"epochs": 1, "learning_rate": 0.005, "batch_size": 4},
                "suffix": "again",
            }
            made = await mine.post("/v1/fine-tunes", json=body)
            assert made.status_code == 201, made.text
            other_file = (await upload(theirs, colour_dataset(per_label=5))).json()["id"]
            refused = await theirs.post("/v1/fine-tunes", json={**body, "training_file": other_file})
            assert refused.status_code == 404, refused.text  # another tenant's model, as if unknown

            job = await wait_for(mine, made.json()["id"], {"succeeded", "failed", "cancelled"})
            assert job["status"] == "succeeded", job
            model = job["fine_tuned_model"]
            assert base in trainer.state.gateway.registry.entries  # the runner found the base it trained from

        image = png(COLOURS["red"], seed=3)
        for gateway in (front, back):
            # a key allowed only the public root may use the tenant's models trained from it
            async with gateway.client() as admin:
                narrow = await admin.post("/v1/admin/tenants/acme/keys", json={"models": ["tiny-vit"]})
            async with gateway.client(narrow.json()["key"]) as http:
                answer = await http.post(
                    f"/v1/models/{model}/predict", content=image, headers={"Content-Type": "image/png"}
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["usage"]["cost_micro"] == 1000  # the root's price
        assert trainer.state.gateway.registry.entries[model].base_model == "tiny-vit"
        assert api_only.state.gateway.registry.entries[model].base_model == "tiny-vit"
