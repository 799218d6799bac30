"""The client's task methods (`classify_text`, `extract_entities`, `embed_images`), sync and
async, against a real `maas serve` process serving small task models (random weights)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from conftest import ADMIN_KEY, TASK_MODELS, png
from maas_client import AsyncClient, Client, Entity, InvalidInputError, Label, Segment

from tests.conftest import TINY_SENTIMENTS
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
TEXTS = ["alice went to paris", "a great movie"]


@pytest.fixture
def client(gateway: Server) -> Iterator[Client]:
    with Client(gateway.base_url, ADMIN_KEY, timeout=60) as client:
        yield client


def test_the_task_models_are_listed_with_their_tasks(client: Client) -> None:
    models = {m.id: m for m in client.models.list()}
    for name, task in TASK_MODELS.items():
        assert models[name].task == task and models[name].status == "ready"


def test_classify_text_ranks_labels_per_text_in_order(client: Client) -> None:
    result = client.classify_text("tiny-sentiment", TEXTS, top_k=2)
    assert result.usage.inputs == 2 and len(result.predictions) == 2
    for ranked in result.predictions:
        assert len(ranked) == 2 and all(isinstance(g, Label) for g in ranked)
        assert {g.label for g in ranked} <= set(TINY_SENTIMENTS) and ranked[0].score >= ranked[1].score
    alone = client.classify_text("tiny-sentiment", TEXTS[1], top_k=2)
    assert [g.label for g in alone.predictions[0]] == [g.label for g in result.predictions[1]]
    with pytest.raises(InvalidInputError, match="empty text"):
        client.classify_text("tiny-sentiment", ["fine", " "])


def test_extract_entities_gives_typed_entities_located_in_each_text(client: Client) -> None:
    result = client.extract_entities("tiny-ner", TEXTS)
    assert result.usage.inputs == 2 and len(result.entities) == 2
    for text, found in zip(TEXTS, result.entities, strict=True):
        for entity in found:
            assert isinstance(entity, Entity) and entity.entity_group in {"PER", "LOC"}
            assert text[entity.start : entity.end] == entity.word and 0 < entity.score <= 1
    assert client.extract_entities("tiny-ner", TEXTS[0]).entities == [result.entities[0]]


def test_embed_images_gives_one_unit_vector_per_image(client: Client) -> None:
    result = client.embed_images("tiny-features", [png(), png((0, 0, 200), size=(50, 70), fmt="JPEG")])
    assert result.usage.inputs == 2 and [len(v) for v in result.embeddings] == [24, 24]
    assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-4) for v in result.embeddings)
    alone = client.embed_images("tiny-features", png())
    assert alone.embeddings[0] == pytest.approx(result.embeddings[0], abs=1e-4)


@pytest.mark.anyio
async def test_the_async_client_has_the_same_task_methods(gateway: Server) -> None:
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as client:
        ranked = await client.classify_text("tiny-sentiment", TEXTS, top_k=1)
        assert [len(r) for r in ranked.predictions] == [1, 1]
        entities = await client.extract_entities("tiny-ner", TEXTS)
        assert len(entities.entities) == 2
        embedded = await client.embed_images("tiny-features", [png(), png((0, 200, 0))])
        assert [len(v) for v in embedded.embeddings] == [24, 24]


def test_classify_zero_shot_ranks_the_given_labels_per_image(client: Client) -> None:
    labels = ["cat", "dog", "red car"]
    result = client.classify_zero_shot(
        "tiny-clip", [png(), png((0, 0, 200), size=(50, 70))], labels, top_k=10
    )
    assert result.usage.inputs == 2 and len(result.predictions) == 2
    for ranked in result.predictions:
        assert sorted(p.label for p in ranked) == sorted(labels)
        assert [p.score for p in ranked] == sorted((p.score for p in ranked), reverse=True)
    alone = client.classify_zero_shot("tiny-clip", png(), labels, top_k=1)  # one image: multipart too
    assert alone.predictions == [result.predictions[0][:1]]
    with pytest.raises(InvalidInputError, match="candidate_labels"):
        client.classify_zero_shot("tiny-clip", png(), [])


@pytest.mark.anyio
async def test_the_async_client_classifies_zero_shot(gateway: Server) -> None:
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as client:
        result = await client.classify_zero_shot("tiny-clip", png(), ["cat", "dog"], top_k=1)
        assert [len(r) for r in result.predictions] == [1]


def test_detect_objects_gives_boxes_inside_each_image(client: Client) -> None:
    images = [png(size=(90, 60)), png((0, 0, 200), size=(50, 70))]
    result = client.detect_objects("tiny-detector", images, threshold=0.0)
    assert result.usage.inputs == 2 and [len(found) for found in result.detections] == [5, 5]
    for (width, height), found in zip([(90, 60), (50, 70)], result.detections, strict=True):
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        for d in found:
            assert 0 <= d.box.xmin <= d.box.xmax <= width and 0 <= d.box.ymin <= d.box.ymax <= height
    with pytest.raises(InvalidInputError, match="threshold"):
        client.detect_objects("tiny-detector", images[0], threshold=2.0)


@pytest.mark.anyio
async def test_the_async_client_detects_objects(gateway: Server) -> None:
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as client:
        result = await client.detect_objects("tiny-detector", png(), threshold=0.0)
        assert len(result.detections) == 1 and len(result.detections[0]) == 5


def test_segment_gives_masks_that_cover_each_image_once(client: Client) -> None:
    sizes = [(90, 60), (50, 70)]
    images = [png(size=sizes[0]), png((0, 0, 200), size=sizes[1])]
    result = client.segment("tiny-segmenter", images, threshold=0.5)
    assert result.usage.inputs == 2 and len(result.segments) == 2
    for (width, height), segments in zip(sizes, result.segments, strict=True):
        assert segments and all(isinstance(s, Segment) and s.score is None for s in segments)
        rows = [s.mask.decode() for s in segments]
        assert all(s.mask.size == [height, width] for s in segments)
        for y in range(height):  # semantic: each pixel in exactly one segment
            for x in range(width):
                assert sum(mask[y][x] for mask in rows) == 1
    with pytest.raises(InvalidInputError, match="threshold"):
        client.segment("tiny-segmenter", images[0], threshold=-1.0)


@pytest.mark.anyio
async def test_the_async_client_segments(gateway: Server) -> None:
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as client:
        result = await client.segment("tiny-segmenter", png(size=(40, 30)))
        assert [[s.mask.size for s in found] for found in result.segments] == [
            [[30, 40]] * len(result.segments[0])
        ]
