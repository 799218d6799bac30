"""Pixels through a worker's shared-memory arena: read bit-exact in place by the model process's
side, the region given back when the call ends however it ends, and inline when there is no room."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.engine.shared import Arena, ArenaReader, SharedArray


def _pixels(seed: int, size: int = 224) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(3, size, size), dtype=np.uint8)


def test_arrays_cross_bit_exact_and_are_read_in_place(tmp_path: Path) -> None:
    arena = Arena(tmp_path / "arena-0", 1 << 20)
    reader = ArenaReader(tmp_path)
    arrays = [_pixels(1), _pixels(2, 32), np.arange(10, dtype=np.float32)]
    with arena.crossing(arrays) as crossing:
        assert all(isinstance(ref, SharedArray) for ref in crossing)
        read = [reader.array(ref) for ref in crossing]
        for got, sent in zip(read, arrays, strict=True):
            assert got.dtype == sent.dtype and got.shape == sent.shape
            assert got.tobytes() == sent.tobytes()
    arena.close()
    assert not (tmp_path / "arena-0").exists()


def test_the_region_is_given_back_when_the_call_ends_even_by_an_error(tmp_path: Path) -> None:
    arena = Arena(tmp_path / "arena-0", 1 << 20)
    with pytest.raises(TimeoutError), arena.crossing([_pixels(1)]):
        assert arena.free_bytes < 1 << 20
        raise TimeoutError  # a deadline, a cancel, a lost model process: the same exit
    assert arena.free_bytes == 1 << 20
    arena.close()


def test_a_call_that_does_not_fit_crosses_inline_and_freed_space_is_merged(tmp_path: Path) -> None:
    image = _pixels(1)  # 150,528 bytes
    arena = Arena(tmp_path / "arena-0", 3 * image.nbytes + 3 * 64)
    with arena.crossing([image]) as first, arena.crossing([image]) as second:
        with arena.crossing([image, image]) as third:  # one more image's room, not two
            assert third[0] is image  # inline: as it was
        assert isinstance(first[0], SharedArray) and isinstance(second[0], SharedArray)
    with arena.crossing([image, image, image]) as all_three:  # the freed regions merged again
        assert all(isinstance(ref, SharedArray) for ref in all_three)
    arena.close()


def test_no_arena_where_the_space_cannot_be_had(tmp_path: Path) -> None:
    assert Arena.create(tmp_path, "arena-0", 0) is None  # the setting at 0: pixels cross inline
    assert Arena.create(tmp_path / "missing", "arena-0", 1 << 20) is None  # logged, not raised
