"""Models registered at run time through the client (`admin.models`), against the real `maas
serve` process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, png, unique
from maas_client import AsyncClient, Client, ConflictError, InvalidInputError, Model, NotFoundError

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


def wait_ready(client: Client, name: str) -> Model:
    deadline = time.monotonic() + 60
    while (model := client.models.get(name)).status not in ("ready", "unavailable"):
        assert time.monotonic() < deadline, model
        time.sleep(0.05)  # a poll interval, not a timing assumption
    return model


def test_register_update_unload_load_and_delete(gateway: Server, tiny_vit_dir: Path) -> None:
    name = unique("sdk-vit")
    with Client(gateway.base_url, ADMIN_KEY) as admin:
        made = admin.admin.models.register(
            {"name": name, "task": "image-classification", "source": str(tiny_vit_dir)}
        )
        assert made.id == name and made.status == "loading"
        assert wait_ready(admin, name).status == "ready"
        assert admin.predict(name, png()).predictions
        with pytest.raises(ConflictError):
            admin.admin.models.register({"name": "tiny-vit", "task": "image-classification", "source": "x"})
        with pytest.raises(InvalidInputError, match="replicas"):
            admin.admin.models.register(
                {"name": unique("bad"), "task": "image-classification", "source": "x", "replicas": 0}
            )

        changed = admin.admin.models.update(name, description="second", price={"per_image": 0.01})
        assert changed.description == "second" and changed.status == "ready"
        assert admin.admin.models.unload(name).status == "unloaded"
        assert admin.admin.models.load(name).status == "loading"
        assert wait_ready(admin, name).status == "ready"
        assert admin.admin.models.delete(name).status == "deleted"
        with pytest.raises(NotFoundError):
            admin.models.get(name)


@pytest.mark.anyio
async def test_the_async_client_registers_too(gateway: Server, tiny_vit_dir: Path) -> None:
    name = unique("async-vit")
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as admin:
        made = await admin.admin.models.register(
            {"name": name, "task": "image-classification", "source": str(tiny_vit_dir)}
        )
        assert made.status == "loading"
        assert (await admin.admin.models.delete(name)).status == "deleted"
        with pytest.raises(NotFoundError):
            await admin.admin.models.delete(name)
