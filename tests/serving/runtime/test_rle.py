"""COCO uncompressed RLE: hand-checked masks in COCO's convention (column-major, counts starting
with a run of zeros) and round trips of random masks."""

from __future__ import annotations

import numpy as np
import pytest

from service.serving.runtime import rle


@pytest.mark.parametrize(
    ("rows", "counts"),
    [
        # read down each column in turn: 0 1 | 1 1
        ([[0, 1], [1, 1]], [1, 3]),
        # a set first pixel starts with an empty run of zeros: 1 1 | 0 1 | 0 0
        ([[1, 0, 0], [1, 1, 0]], [0, 2, 1, 1, 2]),
        ([[0, 0], [0, 0]], [4]),
        ([[1, 1], [1, 1]], [0, 4]),
        # one row: the columns are single pixels
        ([[0, 1, 1, 0, 1]], [1, 2, 1, 1]),
        # one column: the rows in order
        ([[1], [0], [0], [1]], [0, 1, 2, 1]),
    ],
)
def test_hand_checked_masks_encode_and_decode_as_coco_does(rows: list[list[int]], counts: list[int]) -> None:
    mask = np.array(rows, dtype=np.uint8)
    encoded = rle.encode(mask)
    assert encoded == {"size": [mask.shape[0], mask.shape[1]], "counts": counts}
    assert rle.decode(encoded).tolist() == rows


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (3, 7), (32, 48), (1, 50), (50, 1)])
def test_random_masks_round_trip(shape: tuple[int, int]) -> None:
    generator = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 0.9, 1.0):
        mask = generator.random(shape) < density
        encoded = rle.encode(mask)
        assert sum(encoded["counts"]) == mask.size
        assert all(c > 0 for c in encoded["counts"][1:])  # only the first run may be empty
        decoded = rle.decode(encoded)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, mask.astype(np.uint8))


def test_any_nonzero_value_is_set() -> None:
    assert rle.encode(np.array([[0, 255], [3, 0]]))["counts"] == [1, 2, 1]


@pytest.mark.parametrize("bad", [{"size": [2, 2], "counts": [1, 2]}, {"size": [2, 2], "counts": [5, -1]}])
def test_counts_that_do_not_cover_the_mask_are_refused(bad: dict[str, list[int]]) -> None:
    with pytest.raises(ValueError, match="sum to 2 \\* 2"):
        rle.decode(bad)


def test_a_mask_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="2 dimensions"):
        rle.encode(np.zeros((2, 2, 2)))
