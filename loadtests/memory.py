"""How much memory one replica of a model adds to the gateway process, against its weight size.

Builds ViT-B/16 (224, 1000 classes) from `ViTConfig`, saves it with `save_pretrained`, then loads
it through the gateway's own registry (the same code `maas serve` runs: pipeline load, warm-up,
batcher) in a fresh process, and compares the growth of the resident set with the size of the
safetensors file. Target (issue 3): growth <= 1.3 x weights.

    python loadtests/memory.py [--dtype float32|bfloat16] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from workload import MODELS, build_model

CACHE = Path(os.environ.get("MAAS_BENCH_CACHE", Path.home() / ".cache" / "maas-bench"))


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_in_this_process(model_dir: Path, dtype: str) -> dict[str, float]:
    # imported before the baseline: the frameworks themselves are not the model's cost
    import torch
    import transformers.models.vit.modeling_vit  # noqa: F401
    from transformers import pipeline  # noqa: F401

    from service.observability.metrics import Metrics
    from service.serving.devices import DevicePool
    from service.serving.registry import ModelRegistry

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as manifests:
        Path(manifests, "vit-base.yaml").write_text(
            textwrap.dedent(f"""
            name: vit-base
            task: image-classification
            source: {model_dir}
            dtype: {dtype}
        """)
        )
        registry = ModelRegistry(Path(manifests), DevicePool.from_spec("cpu"), Metrics())
        registry.discover()

        async def load() -> int:
            gc.collect()
            before = rss_bytes()
            await registry.ensure_loaded(registry.get("vit-base"))
            gc.collect()
            grown = rss_bytes() - before
            await registry.close()
            return grown

        grown = asyncio.run(load())
    weights = (model_dir / "model.safetensors").stat().st_size
    return {"weights_mb": weights / 2**20, "rss_growth_mb": grown / 2**20, "ratio": grown / weights}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--model-dir", type=Path, default=CACHE / "vit-base")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_in_this_process(args.model_dir, args.dtype)))
        return
    build_model(replace(MODELS["vit-base"], name=args.model_dir.name), args.model_dir.parent)
    # a fresh process, so that building the model does not inflate the baseline
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--dtype", args.dtype, "--model-dir", str(args.model_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    verdict = "meets" if result["ratio"] <= 1.3 else "MISSES"
    print(
        f"ViT-B/16 {args.dtype}: weights {result['weights_mb']:.0f} MiB, process grew "
        f"{result['rss_growth_mb']:.0f} MiB = {result['ratio']:.2f}x weights ({verdict} the 1.3x target)"
    )


if __name__ == "__main__":
    main()
