"""Pixels through shared memory: a front-end worker writes a request's decoded arrays into its own
memory-mapped arena, and only where they lie crosses the socket; the model process reads them in
place (no copy through the socket, the pickle or the reader's buffers).

Each worker has one arena, a file of `MAAS_WORKER_SHARED_MEMORY_MB` in the engine's private
folder (mode 0700, on /dev/shm where there is one: memory, not disk), its space reserved up front
(`posix_fallocate`: a full /dev/shm is found at start, never as a SIGBUS later). A call's arrays
take one region, given back when the call ends: answered, failed, or cancelled. Giving back a
cancelled call's region at once is safe: the model process may still read it in a batch, but
only for the rows of that call, whose outputs nobody reads. A call whose arrays do not fit the
free space, or a worker without an arena, sends them inline in the frame as before.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_ALIGN = 64  # each array starts on a cache line


@dataclass(frozen=True)
class SharedArray:
    """An array a worker wrote into its arena: which arena, where, its shape and dtype."""

    arena: str  # the arena file's name in the engine folder
    offset: int
    shape: tuple[int, ...]
    dtype: str


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


class Arena:
    """A worker's arena: a first-fit allocator of regions over one shared file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # ENOSPC now rather than SIGBUS on a later write
            self._map = mmap.mmap(fd, size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted by offset

    @classmethod
    def create(cls, folder: Path, name: str, size: int) -> Arena | None:
        """An arena of `size` bytes, or None (logged) where it cannot be made: pixels cross inline."""
        if size <= 0:
            return None
        try:
            return cls(folder / name, size)
        except OSError as exc:
            log.warning("no shared memory for pixels (%s): they cross the socket instead", exc)
            return None

    def put(self, arrays: list[np.ndarray[Any, Any]]) -> tuple[list[SharedArray], tuple[int, int]] | None:
        """Copy `arrays` into one free region: their references and the region; None if no room."""
        sizes = [_aligned(a.nbytes) for a in arrays]
        region = self._take(sum(sizes))
        if region is None:
            return None
        refs, offset = [], region[0]
        for array, size in zip(arrays, sizes, strict=True):
            target = np.ndarray(array.shape, array.dtype, buffer=self._map, offset=offset)
            target[...] = array
            refs.append(SharedArray(self.path.name, offset, tuple(array.shape), array.dtype.str))
            offset += size
        return refs, region

    def _take(self, size: int) -> tuple[int, int] | None:
        for i, (offset, free) in enumerate(self._free):
            if free >= size:
                if free == size:
                    del self._free[i]
                else:
                    self._free[i] = (offset + size, free - size)
                return offset, size
        return None

    def give_back(self, region: tuple[int, int]) -> None:
        """Return a region to the free list, merged with its free neighbours."""
        self._free.append(region)
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for offset, size in self._free:
            if merged and merged[-1][0] + merged[-1][1] == offset:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((offset, size))
        self._free = merged

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self._free)

    @contextlib.contextmanager
    def crossing(self, features: list[Any]) -> Iterator[list[Any]]:
        """`features` as they should cross: numpy arrays as references into this arena while the
        block runs (the region is given back when it ends), or as they are if they do not fit."""
        arrays = [f for f in features if isinstance(f, np.ndarray)]
        placed = self.put(arrays) if arrays and len(arrays) == len(features) else None
        if placed is None:
            yield features
            return
        refs, region = placed
        try:
            yield list(refs)
        finally:
            self.give_back(region)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # an array still viewing it keeps the map alive
            self._map.close()
        self.path.unlink(missing_ok=True)


class ArenaReader:
    """The model process's side: each worker's arena mapped once, arrays read in place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._maps: dict[str, mmap.mmap] = {}

    def array(self, ref: SharedArray) -> np.ndarray[Any, Any]:
        if (mapped := self._maps.get(ref.arena)) is None:
            with open(self.folder / ref.arena, "r+b") as file:
                mapped = self._maps[ref.arena] = mmap.mmap(file.fileno(), 0)
        return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=mapped, offset=ref.offset)

    def forget(self, arena: str | None) -> None:
        """A worker went away: drop its map (closed once no array views it any more)."""
        if arena is not None:
            self._maps.pop(arena, None)
