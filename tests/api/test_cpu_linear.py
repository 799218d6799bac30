"""`MAAS_CPU_LINEAR` seen through the API: a float32 model's detail says what runs its Linear
layers on the CPU (and a bfloat16 one's says nothing: oneDNN runs it already)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.settings import Settings
from tests.conftest import image_bytes, started_client, write_manifest

pytestmark = pytest.mark.anyio


@pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
    reason="this torch is built without oneDNN",
)
async def test_a_float32_models_detail_says_its_linear_layers_are_packed_for_onednn(
    settings: Settings, models_dir: Path, tiny_vit_dir: Path
) -> None:
    for name, dtype in (("vit-float32", "float32"), ("vit-bfloat16", "bfloat16")):
        write_manifest(
            models_dir,
            name,
            f"name: {name}\ntask: image-classification\nsource: {tiny_vit_dir}\ndtype: {dtype}\n",
        )
    async with started_client(settings.model_copy(update={"cpu_linear": "onednn"})) as http:
        detail = (await http.get("/v1/models/vit-float32")).json()
        assert detail["status"] == "ready", detail
        # the tiny ViT's encoder: 2 layers of q, k, v, output, and the MLP's two (the head stays plain)
        assert detail["cpu_linear"] == {
            "kernels": "onednn",
            "packed_layers": 12,
            "reason": "oneDNN, packed (MAAS_CPU_LINEAR=onednn)",
        }
        answer = await http.post(
            "/v1/models/vit-float32/predict",
            content=image_bytes("JPEG"),
            headers={"Content-Type": "image/jpeg"},
        )
        assert answer.status_code == 200, answer.text
        [ranked] = answer.json()["predictions"]
        assert sorted(c["label"] for c in ranked) == ["blue", "green", "red"]
        assert (await http.get("/v1/models/vit-bfloat16")).json()["cpu_linear"] is None
