"""Shared fixtures: small real models built with ViTConfig + save_pretrained, manifests, and an
in-process gateway driven through httpx's ASGITransport (its lifespan run for real)."""

from __future__ import annotations

import functools
import io
import os
import secrets
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db import create_db_engine, session_factory, upgrade
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


TINY_WORDS = [
    *("the", "a", "to", "of", "and", "in", "is", "was", "went", "visited"),
    *("alice", "bob", "paris", "london", "good", "bad", "great", "terrible", "movie"),
]
TINY_SENTIMENTS = ["negative", "neutral", "positive"]
TINY_ENTITY_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _tiny_bert(folder: Path, model_class: str, labels: list[str]) -> Path:
    """A real (untrained) small BERT `model_class` over `labels`, saved with a WordPiece tokenizer
    built offline from a vocabulary written here."""
    import torch
    import transformers
    from transformers import BertConfig, BertTokenizerFast

    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, "##s", "##ed"]
    tokenizer = BertTokenizerFast(  # transformers 5 takes the vocabulary itself, not its file
        vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=32
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    getattr(transformers, model_class)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BERT sentiment classifier (random weights) over TINY_SENTIMENTS."""
    folder = tmp_path_factory.mktemp("tiny-sentiment")
    return _tiny_bert(folder, "BertForSequenceClassification", TINY_SENTIMENTS)


@pytest.fixture(scope="session")
def tiny_token_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BERT named-entity tagger (random weights) over TINY_ENTITY_LABELS (B-/I- tags)."""
    folder = tmp_path_factory.mktemp("tiny-ner")
    return _tiny_bert(folder, "BertForTokenClassification", TINY_ENTITY_LABELS)


@pytest.fixture(scope="session")
def tiny_vit_features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ViT backbone (random weights, no head) with its image processor: image features."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-vit-features")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _tiny_bpe(folder: Path, max_length: int) -> dict[str, int]:
    """A byte-pair tokenizer built offline (letters, digits, a few merges), saved in `folder` as
    CLIP's; its vocabulary."""
    import string

    from transformers import CLIPTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + ".,'-!?")
    merges = [("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>")]
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)]
    vocab = {t: i for i, t in enumerate([*tokens, "<|startoftext|>", "<|endoftext|>"])}
    # transformers 5 takes the vocabulary and merges themselves, not their files
    CLIPTokenizerFast(vocab=vocab, merges=merges, model_max_length=max_length).save_pretrained(folder)
    return vocab


TINY_TOWER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CLIP (random weights) with a byte-pair tokenizer and its image processor: zero-shot
    image classification (a softmax over the labels)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    vocab = _tiny_bpe(folder, 32)
    end = vocab["<|endoftext|>"]
    text = {"vocab_size": len(vocab), "max_position_embeddings": 32, "bos_token_id": end - 1}
    config = CLIPConfig(
        text_config={**TINY_TOWER, **text, "eos_token_id": end, "pad_token_id": end},
        vision_config={**TINY_TOWER, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SigLIP (random weights; CLIP's byte-pair tokenizer, padded to 64 tokens as the
    pipeline pads SigLIP's): zero-shot image classification with a sigmoid per label."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-siglip")
    vocab = _tiny_bpe(folder, 64)
    end = vocab["<|endoftext|>"]
    text = {"vocab_size": len(vocab), "max_position_embeddings": 64, "pad_token_id": end}
    config = SiglipConfig(
        text_config={**TINY_TOWER, **text, "eos_token_id": end, "bos_token_id": end - 1},
        vision_config={**TINY_TOWER, "image_size": 32, "patch_size": 8},
    )
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


TINY_OBJECTS = ["cat", "dog"]


@pytest.fixture(scope="session")
def tiny_yolos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small YOLOS object detector (random weights, 5 detection tokens) over TINY_OBJECTS, whose
    processor resizes an image to a shortest edge of 32 and a longest of at most 64 pixels."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-yolos")
    config = YolosConfig(
        **TINY_TOWER,
        image_size=[32, 32],
        patch_size=8,
        num_detection_tokens=5,
        id2label=dict(enumerate(TINY_OBJECTS)),
        label2id={n: i for i, n in enumerate(TINY_OBJECTS)},
    )
    YolosForObjectDetection(config).save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return folder


TINY_SEGMENTS = ["background", "cat", "dog"]


@pytest.fixture(scope="session")
def tiny_segformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SegFormer semantic segmenter (random weights, two encoder stages) over TINY_SEGMENTS,
    whose processor resizes every image to 32x32; its logits are 8x8."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-segformer")
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        id2label=dict(enumerate(TINY_SEGMENTS)),
        label2id={n: i for i, n in enumerate(TINY_SEGMENTS)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_mask2former_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Mask2Former (random weights, a tiny Swin backbone, 5 queries) over TINY_OBJECTS,
    whose processor keeps the aspect ratio (shortest edge 64, longest at most 128: the backbone's
    last stage needs 2x2 pixels for its group norms) and pads to multiples of 32: a panoptic (and
    instance) segmenter."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-mask2former")
    backbone = SwinConfig(
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,  # the pixel decoder's group norms take 32 groups
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=5,
        id2label=dict(enumerate(TINY_OBJECTS)),
        label2id={n: i for i, n in enumerate(TINY_OBJECTS)},
        use_pretrained_backbone=False,
    )
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32
    ).save_pretrained(folder)
    return folder


def write_manifest(models_dir: Path, name: str, body: str) -> Path:
    path = models_dir / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


TINY_VIT_BATCHING = "{max_batch_size: 8, max_delay_ms: 2}"


def write_tiny_vit(
    models_dir: Path,
    source: Path,
    *,
    price: str | None = "{per_image: 0.001}",
    batching: str | None = TINY_VIT_BATCHING,
) -> Path:
    """The `tiny-vit` manifest over the tiny test ViT at `source`, with `price` and `batching`
    (YAML flow mappings; None leaves the key out)."""
    lines = ["name: tiny-vit", "task: image-classification", f"source: {source}"]
    lines += [f"batching: {batching}"] if batching else []
    lines += [f"price: {price}"] if price else []
    return write_manifest(models_dir, "tiny-vit", "\n".join(lines) + "\n")


@pytest.fixture
def models_dir(tmp_path: Path, tiny_vit_dir: Path) -> Path:
    """A models folder with the tiny ViT and one manifest whose source cannot be found."""
    folder = tmp_path / "models"
    folder.mkdir()
    write_tiny_vit(
        folder,
        tiny_vit_dir,
        price="{per_image: 0.001, per_training_sample: 0.0001, per_training_second: 0.01}",
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


@asynccontextmanager
async def started_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway on `settings` in-process, started (lifespan) and ready, and a client for it with
    the admin key set."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as http:
            yield http


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, started (lifespan) and ready, with the admin key set."""
    async with started_client(settings) as http:
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


# Real PostgreSQL and Redis: those the environment names (.ci/run does), else the standard local
# addresses if they answer at once; else those tests skip. The report header says which.
POSTGRES_URL_VAR = "MAAS_TEST_POSTGRES_URL"
REDIS_URL_VAR = "MAAS_TEST_REDIS_URL"
LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
PROBE_TIMEOUT_S = 1


@dataclass(frozen=True)
class FoundServer:
    """A server the tests use (`url`), or why they skip (`url` None)."""

    url: str | None
    why: str


def _probe_postgres(url: str) -> None:
    engine = create_engine(url, connect_args={"connect_timeout": PROBE_TIMEOUT_S})
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _probe_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
    ) as client:
        client.ping()


def _find(variable: str, local: str, probe: Callable[[str], None]) -> FoundServer:
    if url := os.environ.get(variable):
        return FoundServer(url, f"from {variable}")
    try:
        probe(local)
    except Exception as exc:  # any failure to answer means: not there
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return FoundServer(None, f"{variable} unset and {local} did not answer ({reason[:120]})")
    return FoundServer(local, f"{variable} unset; {local} answered")


@functools.cache
def found_postgres() -> FoundServer:
    return _find(POSTGRES_URL_VAR, LOCAL_POSTGRES_URL, _probe_postgres)


@functools.cache
def found_redis() -> FoundServer:
    return _find(REDIS_URL_VAR, LOCAL_REDIS_URL, _probe_redis)


def pytest_report_header() -> list[str]:
    return [
        f"postgresql: {found_postgres().url or 'none, its tests skip'} ({found_postgres().why})",
        f"redis: {found_redis().url or 'none, its tests skip'} ({found_redis().why})",
    ]


def postgres_url_or_skip() -> str:
    found = found_postgres()
    if found.url is None:
        pytest.skip(
            f"needs PostgreSQL: {found.why}; set {POSTGRES_URL_VAR}=postgresql+psycopg://user@host:5432/db"
        )
    return found.url


def redis_url_or_skip() -> str:
    found = found_redis()
    if found.url is None:
        pytest.skip(f"needs Redis: {found.why}; set {REDIS_URL_VAR}=redis://host:6379/0")
    return found.url


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A database of its own (created here, dropped after), so runs never see each other's rows."""
    name = f"maas_test_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests on an SQLite file and, when available, on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        (tmp_path / "var").mkdir(exist_ok=True)
        yield f"sqlite:///{tmp_path / 'var' / 'maas.db'}"
        return
    with fresh_postgres_database(postgres_url_or_skip()) as url:
        yield url


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database."""
    engine = create_db_engine(database_url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
async def gateway(settings: Settings, database_url: str) -> AsyncIterator[Gateway]:
    """The gateway in-process on `database_url`, started and ready."""
    app = create_app(settings.model_copy(update={"database_url": database_url}))
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        yield Gateway(app)


class Gateway:
    """An in-process gateway and HTTP clients for it, one per key."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def client(self, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://gateway", headers=headers
        )
