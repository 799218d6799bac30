"""Shared fixtures: small real models built with ViTConfig + save_pretrained, manifests, and an
in-process gateway driven through httpx's ASGITransport (its lifespan run for real)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.app import create_app
from service.settings import Settings

ADMIN_KEY = "mk_test_admin_key_for_the_suite_0123456789"
TINY_LABELS = ["red", "green", "blue"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) ViT image classifier saved like any hub model: config, safetensors, processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(TINY_LABELS),
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={n: i for i, n in enumerate(TINY_LABELS)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_manifest(models_dir: Path, name: str, body: str) -> Path:
    path = models_dir / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def models_dir(tmp_path: Path, tiny_vit_dir: Path) -> Path:
    """A models folder with the tiny ViT and one manifest whose source cannot be found."""
    folder = tmp_path / "models"
    folder.mkdir()
    write_manifest(
        folder,
        "tiny-vit",
        f"""
        name: tiny-vit
        task: image-classification
        source: {tiny_vit_dir}
        batching: {{max_batch_size: 8, max_delay_ms: 2}}
        price: {{per_image: 0.001}}
    """,
    )
    write_manifest(
        folder,
        "missing",
        """
        name: missing
        task: image-classification
        source: ./no-such-folder
    """,
    )
    return folder


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "var",
        admin_key=ADMIN_KEY,
        devices="cpu",
        max_body_bytes=2 * 1024 * 1024,
        max_image_pixels=4_000_000,
        max_inputs_per_request=8,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, started (lifespan) and ready, with the admin key set."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.registry.preload_done.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as http:
            yield http


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return image_bytes
