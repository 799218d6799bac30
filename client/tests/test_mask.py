"""`Mask.decode`: COCO's uncompressed run-length encoding read as the gateway writes it."""

from __future__ import annotations

import pytest
from maas_client import Mask


def test_a_mask_decodes_column_by_column_from_a_run_of_unset_pixels() -> None:
    assert Mask(size=[2, 3], counts=[0, 2, 1, 1, 2]).decode() == [[1, 0, 0], [1, 1, 0]]
    assert Mask(size=[3, 1], counts=[1, 1, 1]).decode() == [[0], [1], [0]]
    assert Mask(size=[2, 2], counts=[1, 3]).decode() == [[0, 1], [1, 1]]
    assert Mask(size=[1, 2], counts=[2]).decode() == [[0, 0]]


@pytest.mark.parametrize("counts", [[1, 2], [5, -1], [2, 2, 1]])
def test_counts_that_do_not_cover_the_mask_are_refused(counts: list[int]) -> None:
    with pytest.raises(ValueError, match="sum to 2 \\* 2"):
        Mask(size=[2, 2], counts=counts).decode()
