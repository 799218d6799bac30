"""COCO's uncompressed run-length encoding of a binary mask: `{"size": [h, w], "counts": [...]}`.

The mask is read column by column (Fortran order: down the first column, then the second, ...);
`counts` are the lengths of its alternating runs, starting with a run of zeros (0 when the first
pixel is set), so they sum to h * w. This is the form pycocotools' `frPyObjects` takes for an
uncompressed RLE, and what `mask.decode` gives back."""

from __future__ import annotations

from typing import Any

import numpy as np


def encode(mask: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The RLE of a 2-D mask (any dtype: nonzero is set)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask has 2 dimensions, not {mask.ndim}")
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [int(height), int(width)], "counts": []}
    # where a run ends: each change, and the end; the first run counted is of zeros
    ends = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], ends, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(height), int(width)], "counts": counts}


def decode(rle: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The (h, w) 0/1 mask an RLE describes; ValueError when its counts do not cover h * w pixels."""
    height, width = (int(n) for n in rle["size"])
    counts = [int(c) for c in rle["counts"]]
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts must be non-negative and sum to {height} * {width}")
    values = np.arange(len(counts)) % 2  # zeros, ones, zeros, ...
    flat = np.repeat(values.astype(np.uint8), counts)
    return flat.reshape((height, width), order="F")
