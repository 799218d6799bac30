"""service/heap.py: a `maas serve` process's long-lived objects frozen out of the collector's
generations, and found again when a model is freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service import heap


@pytest.fixture
def managed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(heap, "_managed", True)
    yield
    gc.unfreeze()  # the rest of the test session collects as before


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_a_process_that_does_not_manage_its_heap_is_left_alone() -> None:
    before = gc.get_freeze_count()
    heap.settle()
    assert gc.get_freeze_count() == before


def test_what_is_alive_leaves_the_collectors_generations(managed: None) -> None:
    kept = _Node()
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # later collections do not walk it


def test_garbage_is_collected_before_the_freeze(managed: None) -> None:
    dropped = _Node()
    ref = weakref.ref(dropped)
    del dropped
    heap.settle()
    assert ref() is None


def test_a_frozen_object_dropped_later_is_freed_by_the_next_settle(managed: None) -> None:
    node = _Node()  # as a model's modules: loaded (and frozen), then unloaded
    ref = weakref.ref(node)
    heap.settle()
    del node
    gc.collect()
    assert ref() is not None  # frozen: a plain collection does not see it
    heap.settle()
    assert ref() is None
