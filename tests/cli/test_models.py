"""`maas models …` as a user runs it (real subprocesses on a real database), with a gateway on the
same database following what it registers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.settings import Settings
from tests.api.test_model_management import predict, replicas, wait_gone, wait_status
from tests.cli.test_tenants import maas

pytestmark = pytest.mark.anyio


async def test_register_list_unload_and_delete_from_the_shell(
    settings: Settings, database_url: str, tiny_vit_dir: Path, tmp_path: Path
) -> None:
    file = tmp_path / "shell-vit.yaml"
    file.write_text(
        f"name: shell-vit\ntask: image-classification\nsource: {tiny_vit_dir}\n", encoding="utf-8"
    )
    folder = ["--models-dir", str(settings.models_dir)]
    async with replicas(settings, 1, database_url=database_url, model_sync_s=0.2, redis_url=None) as [gw]:
        done = maas("models", "register", str(file), *folder, database_url=database_url, cwd=tmp_path)
        assert "registered model shell-vit" in done.stdout
        async with gw.client() as admin:
            await wait_status(admin, "shell-vit", {"ready"})
            assert (await predict(admin, "shell-vit")).status_code == 200
            listed = maas("models", "list", database_url=database_url, cwd=tmp_path).stdout
            assert "shell-vit" in listed and "loaded" in listed

            maas("models", "unload", "shell-vit", database_url=database_url, cwd=tmp_path)
            await wait_status(admin, "shell-vit", {"unloaded"})
            maas("models", "delete", "shell-vit", database_url=database_url, cwd=tmp_path)
            await wait_gone(admin, "shell-vit")
            assert "shell-vit" not in maas("models", "list", database_url=database_url, cwd=tmp_path).stdout


def test_bad_files_and_taken_names_are_refused(
    settings: Settings, database_url: str, tiny_vit_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "task": "image-classification", "source": "x", "replicas": 0}))
    refused = maas("models", "register", str(bad), database_url=database_url, cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "replicas" in refused.stderr
    taken = tmp_path / "taken.yaml"
    taken.write_text(
        f"name: tiny-vit\ntask: image-classification\nsource: {tiny_vit_dir}\n", encoding="utf-8"
    )
    folder = ["--models-dir", str(settings.models_dir)]
    clash = maas(
        "models", "register", str(taken), *folder, database_url=database_url, cwd=tmp_path, check=False
    )
    assert clash.returncode == 1 and "tiny-vit" in clash.stderr
    missing = maas("models", "delete", "nothing", database_url=database_url, cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
