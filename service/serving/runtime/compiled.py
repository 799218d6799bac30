"""`compile: true` in a manifest: the model's forward pass compiled with torch.compile.

A compiled graph is specialised to its input shapes, so a batch of every new size would compile
again (seconds each). Batches are padded instead up to a few fixed sizes, the buckets (powers of
two up to the manifest's `max_batch_size`, and that size itself), each compiled once at load;
the padding rows (zeros) are cut from the output before anything reads it. Rows of these models
do not mix (no batch statistics in eval mode), so a row's output does not depend on its padding.

Where compiling is impossible (no C++ compiler for the CPU backend, a model the compiler
refuses), the model still loads and runs eagerly; the reason is logged and shown in the model's
detail (`compile.reason`).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]

# dynamo keeps its compiled graphs per Python function, and every model of one class shares
# its forward's: the limit on graphs per function grows with each compiled model's buckets
_limits_lock = threading.Lock()
_compile_lock = threading.Lock()  # one compilation at a time: dynamo's caches are process-wide


def batch_buckets(max_batch_size: int) -> list[int]:
    """The batch sizes compiled: powers of two below `max_batch_size`, and `max_batch_size`."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if (1 << i) < max_batch_size]
    return [*sizes, max_batch_size]


def bucket_for(size: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `size` rows."""
    for bucket in buckets:
        if bucket >= size:
            return bucket
    raise ValueError(f"a batch of {size} is larger than the largest compiled size {buckets[-1]}")


@dataclass
class CompileState:
    """What `compile: true` became: compiled (`active`) at `batch_sizes`, or eager with `reason`."""

    active: bool
    batch_sizes: list[int] = field(default_factory=list)
    reason: str | None = None
    seconds: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "batch_sizes": self.batch_sizes,
            "reason": self.reason,
            "seconds": round(self.seconds, 2) if self.seconds is not None else None,
        }


class BucketedForward:
    """`forward` compiled, called on a batch padded to its bucket; the output cut back to the batch."""

    def __init__(self, forward: Forward, buckets: list[int]) -> None:
        self.compiled: Forward = torch.compile(forward, dynamic=False)
        self.buckets = buckets
        # a GPU replica runs two batches at once: their kernels are launched one call at a time
        # (the device runs them in order anyway; reading the outputs is what overlaps)
        self._launch = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        rows = batch.shape[0]
        bucket = bucket_for(rows, self.buckets)
        if bucket > rows:
            padding = batch.new_zeros((bucket - rows, *batch.shape[1:]))
            batch = torch.cat([batch, padding])
        with self._launch:
            return self.compiled(batch)[:rows]

    def warm(self, sample: torch.Tensor) -> None:
        """Compile every bucket now, from one input row, so that no request waits for a compile."""
        for bucket in self.buckets:
            self.compiled(sample.expand(bucket, *sample.shape[1:]).contiguous())


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device` here, or None when it can try."""
    if os.environ.get("CXX"):
        return None  # inductor uses $CXX: a wrong one fails the compile, and that reason is shown
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "clang++", "c++")):
        return "no C++ compiler (g++ or clang++) on PATH: torch.compile needs one for the CPU"
    if device.type == "cuda" and not any(shutil.which(c) for c in ("gcc", "cc", "clang")):
        return "no C compiler (gcc) on PATH: torch.compile's GPU kernels need one"
    return None


def _room_for(graphs: int) -> None:
    config: Any = torch._dynamo.config
    with _limits_lock:
        for name, older in (("recompile_limit", "cache_size_limit"), ("accumulated_recompile_limit", None)):
            name = name if hasattr(config, name) else older or name  # torch < 2.6 spells it older
            if hasattr(config, name):
                setattr(config, name, getattr(config, name) + graphs)


def compile_forward(
    forward: Forward, sample: torch.Tensor, max_batch_size: int, device: torch.device, *, name: str
) -> tuple[Forward, CompileState]:
    """`forward` compiled at every bucket up to `max_batch_size` (warmed now with `sample`, one
    normalised input row on the device), or `forward` itself where that fails, with the reason."""
    import time

    missing = compiler_missing(device)
    if missing is not None:
        log.warning("model %s: compile: true, but running eagerly: %s", name, missing)
        return forward, CompileState(active=False, reason=missing)
    buckets = batch_buckets(max_batch_size)
    started = time.perf_counter()
    bucketed = BucketedForward(forward, buckets)
    _room_for(len(buckets))
    try:
        with _compile_lock, torch.inference_mode():
            bucketed.warm(sample)
    except Exception as exc:  # any compiler failure: the model still serves, eagerly
        reason = f"torch.compile failed, running eagerly: {type(exc).__name__}: {_first_line(exc)}"
        log.warning("model %s: %s", name, reason)
        return forward, CompileState(active=False, reason=reason)
    seconds = time.perf_counter() - started
    log.info("model %s: compiled for batch sizes %s in %.1fs", name, buckets, seconds)
    return bucketed, CompileState(active=True, batch_sizes=buckets, seconds=seconds)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else "(no message)"
