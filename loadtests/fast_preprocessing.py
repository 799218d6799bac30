"""The fast image path against the model's own processor: agreement and CPU time per image.

    python loadtests/fast_preprocessing.py [--digits 360]

Agreement: the shipped digits-vit on held-out scikit-learn digits upscaled to 640x480 JPEGs (top-1
agreement of the two paths, accuracy of each, the largest top-1 score difference), and the shipped
EfficientNet-Lite0 on scikit-image's real photos at 640x480. Time: decode + preprocess per
640x480 JPEG with each path, for the benchmark's models' processors (workload.py), median of runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import MODELS, build_model  # noqa: E402

from service.serving.inputs import ImageLimits, RawInput, decode_image  # noqa: E402
from service.serving.manifests import read_manifest  # noqa: E402
from service.serving.runtime import ModelAdapter, load_adapter  # noqa: E402
from tests.serving.runtime.test_fast_images import digits_as_large_jpegs  # noqa: E402

CPU = torch.device("cpu")
LIMITS = ImageLimits(max_pixels=10**8, max_aspect_ratio=32)


def photos_640x480() -> list[bytes]:
    from skimage import data

    bodies = []
    for load in (data.chelsea, data.astronaut, data.coffee, data.rocket, data.immunohistochemistry):
        image = Image.fromarray(load()).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def adapters(manifest_path: Path) -> dict[str, ModelAdapter]:
    manifest = read_manifest(manifest_path)
    return {
        how: load_adapter(
            manifest.model_copy(update={"preprocessing": how}), manifest_path.parent, CPU, torch.float32
        )
        for how in ("fast", "exact")
    }


def features(adapter: ModelAdapter, bodies: list[bytes]) -> list[Any]:
    return [
        adapter.preprocess(decode_image(RawInput(i, b), LIMITS, draft=adapter.draft))
        for i, b in enumerate(bodies)
    ]


def agreement(name: str, manifest: Path, bodies: list[bytes], labels: list[int] | None) -> None:
    paths = adapters(manifest)
    top = {how: a.predict(features(a, bodies), top_k=1) for how, a in paths.items()}
    same = sum(f[0].label == e[0].label for f, e in zip(top["fast"], top["exact"], strict=True))  # type: ignore[union-attr]
    diff = max(abs(f[0].score - e[0].score) for f, e in zip(top["fast"], top["exact"], strict=True))  # type: ignore[union-attr]
    line = f"{name}: top-1 agreement {same}/{len(bodies)} ({same / len(bodies):.1%})"
    line += f", max top-1 score difference {diff:.4f}"
    if labels is not None:
        for how, outputs in top.items():
            right = sum(o[0].label == str(y) for o, y in zip(outputs, labels, strict=True))  # type: ignore[union-attr]
            line += f", {how} accuracy {right / len(labels):.1%}"
    print(line)


def per_image_ms(adapter: ModelAdapter, bodies: list[bytes], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        features(adapter, bodies)
        times.append((time.perf_counter() - started) / len(bodies) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--digits", type=int, default=360, help="held-out digits to compare on")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bodies, labels = digits_as_large_jpegs(args.digits)
    agreement("digits-vit", REPO / "models" / "digits-vit.yaml", bodies, labels)
    photos = photos_640x480()
    agreement("efficientnet-lite0", REPO / "models" / "efficientnet-lite0.yaml", photos, None)
    with tempfile.TemporaryDirectory() as cache:
        for spec in MODELS.values():
            folder = build_model(spec, Path(cache))
            manifest = folder.parent / f"{spec.name}.yaml"
            manifest.write_text(f"name: {spec.name}\ntask: image-classification\nsource: {folder.name}\n")
            paths = adapters(manifest)
            ms = {how: per_image_ms(a, photos) for how, a in paths.items()}
            print(
                f"{spec.name} ({spec.image_size}px): decode + preprocess of a 640x480 JPEG: "
                f"exact {ms['exact']:.2f} ms, fast {ms['fast']:.2f} ms ({ms['exact'] / ms['fast']:.1f}x)"
            )


if __name__ == "__main__":
    main()
