"""What the benchmark serves and sends: three ViT classifiers built from `ViTConfig`, real JPEG
bodies, and the raw limit of a model measured in-process on this machine.

Random weights are fine: speed does not depend on what the weights say. The models are saved with
`save_pretrained` (plus a `ViTImageProcessor`) exactly like a hub model, into a cache folder
(`~/.cache/maas-bench` by default) so that later runs skip the build.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ModelSpec:
    """A ViT image classifier, by its shape."""

    name: str
    image_size: int
    patch_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    num_labels: int


MODELS: dict[str, ModelSpec] = {
    # overhead-bound: the forward pass is well under a millisecond
    "tiny": ModelSpec("tiny", 32, 8, 32, 2, 2, 64, 10),
    # DeiT-tiny-sized: hidden 192, 12 layers, 3 heads, patch 16, 224
    "deit-tiny": ModelSpec("deit-tiny", 224, 16, 192, 12, 3, 768, 1000),
    # ViT-B/16 at 224
    "vit-base": ModelSpec("vit-base", 224, 16, 768, 12, 12, 3072, 1000),
}


def build_model(spec: ModelSpec, cache_dir: Path) -> Path:
    """The saved model folder for `spec`, built (seed 0) on first use and reused afterwards."""
    folder = cache_dir / spec.name
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = [f"class_{i}" for i in range(spec.num_labels)]
    config = ViTConfig(  # type: ignore[call-arg]  # the PretrainedConfig kwargs (num_labels, …)
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate_size,
        num_labels=spec.num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    partial = folder.with_name(folder.name + ".partial")
    ViTForImageClassification(config).save_pretrained(partial)
    ViTImageProcessor(size={"height": spec.image_size, "width": spec.image_size}).save_pretrained(partial)
    partial.replace(folder)  # a half-written folder is never taken for a model
    return folder


def weights_bytes(folder: Path) -> int:
    """Size of the model's safetensors on disk (float32)."""
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def jpeg_bodies(count: int = 12, seed: int = 0) -> list[bytes]:
    """Real photos (scikit-image's chelsea, astronaut, coffee) cropped and resized to 224-512 px, q90."""
    from skimage import data

    rng = np.random.default_rng(seed)
    loaders = (data.chelsea, data.astronaut, data.coffee)
    photos = [Image.fromarray(load()) for load in loaders]  # type: ignore[no-untyped-call]
    bodies: list[bytes] = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        crop_w, crop_h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        side = int(rng.integers(224, 513))
        scale = side / max(crop_w, crop_h)
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(
            (max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BILINEAR
        )
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def cpu_name() -> str:
    """The CPU's model name and the instruction set torch's kernels use (`AVX512`, `AVX2`...): this
    project's machines of one kind are not always the same CPU, and numbers move with it."""
    import torch

    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        for line in info:
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


@dataclass(frozen=True)
class RawLimit:
    """The most images per second this machine can push through the model, without any serving."""

    preprocess_ms: float  # per image: JPEG decode + RGB + the model's image processor
    forward_ms: float  # per image, at the best batch size and thread count
    best_batch_size: int
    best_threads: int
    forward_ms_by_threads: dict[int, dict[int, float]]  # threads -> batch size -> ms per image
    # forward passes only, one batch per core side by side on one thread each (as the gateway's
    # CPU lanes run them), at the best one-thread batch size, with the Linear layers the gateway
    # picks at default settings (packed for oneDNN on a CPU with AVX-512): the ceiling
    # for the gateway in float32
    lanes: int = 1
    forward_only_images_per_s: float = 0.0
    onednn_linear: bool = False  # whether the forward-only limit ran on Linear layers packed for oneDNN

    @property
    def images_per_s(self) -> float:
        return 1000.0 / (self.preprocess_ms + self.forward_ms)


def _timed_loop(step: Any, min_s: float, min_iterations: int, repeats: int = 3) -> float:
    """Seconds per call of `step`: the best of `repeats` means, each over at least `min_iterations`
    calls and `min_s / repeats` seconds, after a warm-up of the same length (the machine is shared,
    and the first calls of a new shape are slow)."""
    means = []
    for attempt in range(repeats + 1):
        iterations, start = 0, time.perf_counter()
        while iterations < min_iterations or time.perf_counter() - start < min_s / repeats:
            step()
            iterations += 1
        if attempt:  # attempt 0 is the warm-up
            means.append((time.perf_counter() - start) / iterations)
    return min(means)


def measure_raw_limit(
    folder: Path, bodies: list[bytes], *, batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32), min_s: float = 1.0
) -> RawLimit:
    """Preprocess time per image plus forward time per image at the best batch size, float32, in-process.

    Uses the same code path as the gateway's transformers adapter (PIL decode and `.convert("RGB")`,
    the saved image processor, the model under `torch.inference_mode`, softmax and top-5). The forward
    pass is timed with torch's default thread count (what a server process gets unless it sets one)
    and with one thread, and the faster counts: on a busy 2-core machine one intra-op thread is often
    several times faster than two, which wait on each other whenever one is descheduled.
    It also measures the forward-only limit with every core running a batch of its own
    (`forward_lanes_limit`): above it no server goes, whatever it does with the images.
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    processor = AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    cursor = iter(range(1 << 62))

    def preprocess_one() -> torch.Tensor:
        image = Image.open(io.BytesIO(bodies[next(cursor) % len(bodies)]))
        image.load()
        pixels: torch.Tensor = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return pixels

    preprocess_s = _timed_loop(preprocess_one, min_s, 2 * len(bodies))
    sample = preprocess_one()
    default_threads = torch.get_num_threads()
    by_threads: dict[int, dict[int, float]] = {}
    try:
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            by_batch = by_threads[threads] = {}
            with torch.inference_mode():
                for size in batch_sizes:
                    batch = sample.repeat(size, 1, 1, 1)

                    def forward(batch: torch.Tensor = batch) -> None:
                        model(pixel_values=batch).logits.softmax(dim=-1).topk(5, dim=-1)

                    by_batch[size] = _timed_loop(forward, min_s, 1, repeats=2) / size * 1000
    finally:
        torch.set_num_threads(default_threads)
    threads, size = min(
        ((t, b) for t, row in by_threads.items() for b in row), key=lambda tb: by_threads[tb[0]][tb[1]]
    )
    lanes = default_threads  # as the gateway's CPU lanes: one per intra-op thread torch starts with
    one_thread = by_threads[1]
    lane_batch = sample.repeat(min(one_thread, key=one_thread.__getitem__), 1, 1, 1)
    packed = pack_as_the_gateway(model)
    forward_only = forward_lanes_limit(model, lane_batch, lanes, 2 * min_s)
    return RawLimit(
        preprocess_s * 1000, by_threads[threads][size], size, threads, by_threads, lanes, forward_only, packed
    )


def pack_as_the_gateway(model: Any) -> bool:
    """Pack `model`'s encoder Linear layers for oneDNN where the gateway does at default settings
    (MAAS_CPU_LINEAR=auto, service/serving/runtime/cpu_linear.py): the forward-only limit stays a
    ceiling for the gateway. Whether it did."""
    from service.serving.runtime.cpu_linear import onednn_wanted, pack_linears

    if not onednn_wanted("auto")[0]:
        return False
    return bool(pack_linears(model.base_model).layers)


def forward_lanes_limit(model: Any, batch: Any, lanes: int, min_s: float) -> float:
    """Images per second of `lanes` threads each running `model` on `batch` over and over with
    one intra-op thread (torch's thread count is per thread), after a warm-up pass each: the
    forward-only limit of one model held once and run one batch per core. Host memory is kept for
    reuse from here on, as the gateway's model process keeps it (service/serving/host_memory.py), so
    that this stays a ceiling for the gateway; the raw limit, measured before, is a plain process's."""
    import torch

    from service.serving.host_memory import keep_freed_host_memory

    keep_freed_host_memory()

    images = [0] * lanes
    began, ended = [0.0] * lanes, [0.0] * lanes
    together = threading.Barrier(lanes)  # every lane warm before any is timed

    def lane(index: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            model(pixel_values=batch)
            together.wait()
            began[index] = time.perf_counter()
            while time.perf_counter() - began[index] < min_s:
                model(pixel_values=batch).logits.softmax(dim=-1).topk(5, dim=-1)
                images[index] += len(batch)
            ended[index] = time.perf_counter()

    threads = [threading.Thread(target=lane, args=(i,), daemon=True) for i in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(images) / (max(ended) - min(began))


def phase_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a load test that measures the gateway on one model in timed phases: `--model`,
    `--duration`, `--warmup`, the batching and `--cache-dir`. The test adds its own, and parses."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit-tiny", choices=sorted(MODELS))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not recorded before each phase")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "maas-bench")
    return parser


def phase_model(args: argparse.Namespace) -> tuple[Path, list[bytes]]:
    """The folder of `args.model` (built into `args.cache_dir` the first time) and the JPEG bodies."""
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    return build_model(MODELS[args.model], args.cache_dir), jpeg_bodies()
