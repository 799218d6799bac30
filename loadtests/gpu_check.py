"""The GPU check: half precision on CUDA, raw ViT-B/16 throughput by dtype and batch size, and the
gateway's own throughput on the GPU, in one short run for a machine with a GPU.

    python loadtests/gpu_check.py --json gpu.json              # on a CUDA machine, about 3 minutes
    python loadtests/gpu_check.py --device cpu --quick         # the same steps on the CPU: a dry run

Steps, each printed as it ends:
1. the device: name, memory, whether bfloat16 is supported;
2. precision: ViT-B/16 (built from `ViTConfig`, see workload.py) on real JPEGs in float32 and in
   float16 (and bfloat16 where supported): the largest difference of the softmax probabilities from
   float32, and whether the top-5 labels agree;
3. the raw forward throughput (images/s, forward pass only, `torch.cuda.synchronize` around it) for
   each dtype at batch sizes 1, 16 and 64, and the JPEG decode + image processor cost per image on
   one CPU core;
4. the gateway: `maas serve --devices <device>` with `dtype: auto` (float16 on CUDA), checks that
   `/v1/models/bench` says so, then drives it closed-loop at each concurrency and reports throughput,
   p50 and p99 next to the raw float16 limit, and the device memory the gateway reports.

On a machine without the gateway's dependencies (the lent GPU machines have torch and transformers
but not FastAPI and the rest) carry them as wheels: `scripts/gpu_wheels.sh` downloads them into
`.whl/`, and loadtests/README.md gives the whole command.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import build_request, run_closed_loop
from servers import BENCH_KEY, start_server
from workload import MODELS, _timed_loop, build_model, jpeg_bodies

BATCH_SIZES = (1, 16, 64)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for a dry run")
    parser.add_argument("--model", default="vit-base", choices=sorted(MODELS))
    parser.add_argument("--concurrency", default="16,64,128", help="closed-loop clients, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="tiny model, concurrency 4, 3 s: a dry run")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "maas-bench")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.concurrency, args.duration = "tiny", "4", 3.0
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            bfloat16=torch.cuda.is_bf16_supported(),
        )
    else:
        info.update(name="cpu", bfloat16=True)
    return info


def dtypes_for(info: dict[str, Any]) -> list[str]:
    return ["float32", "float16"] + (["bfloat16"] if info["bfloat16"] else [])


def precision(folder: Path, bodies: list[bytes], device: Any, dtypes: list[str]) -> dict[str, Any]:
    """How far float16/bfloat16 probabilities are from float32's, on the same real images."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
    images = [Image.open(io.BytesIO(body)).convert("RGB") for body in bodies]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
    probabilities: dict[str, torch.Tensor] = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        model = AutoModelForImageClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
        with torch.inference_mode():
            probabilities[name] = model(pixel_values=pixels.to(dtype)).logits.float().softmax(-1).cpu()
        del model
    reference = probabilities["float32"]
    top5 = reference.topk(5, dim=-1).indices
    report: dict[str, Any] = {}
    for name in dtypes[1:]:
        other = probabilities[name]
        report[name] = {
            "max_abs_probability_diff": float((other - reference).abs().max()),
            "top1_agreement": float((other.argmax(-1) == reference.argmax(-1)).float().mean()),
            "top5_agreement": float((other.topk(5, dim=-1).indices == top5).all(-1).float().mean()),
        }
    return report


def raw_throughput(
    folder: Path, bodies: list[bytes], device: Any, dtypes: list[str], min_s: float
) -> dict[str, Any]:
    """Forward-only images/s per dtype and batch size; preprocessing ms per image on one core."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
    cursor = iter(range(1 << 62))

    def preprocess_one() -> torch.Tensor:
        image = Image.open(io.BytesIO(bodies[next(cursor) % len(bodies)]))
        pixels: torch.Tensor = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return pixels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        preprocess_ms = _timed_loop(preprocess_one, min_s, 2 * len(bodies)) * 1000
    finally:
        torch.set_num_threads(threads)
    sample = preprocess_one()
    forward: dict[str, dict[int, float]] = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        model = AutoModelForImageClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
        forward[name] = {}
        for size in BATCH_SIZES:
            batch = sample.repeat(size, 1, 1, 1).to(device, dtype)

            def step(batch: torch.Tensor = batch, model: Any = model) -> None:
                with torch.inference_mode():
                    model(pixel_values=batch).logits.softmax(-1).topk(5, dim=-1)
                _sync(device)

            forward[name][size] = round(size / _timed_loop(step, min_s, 3, repeats=2), 1)
        del model
    return {"preprocess_ms_per_image_one_core": round(preprocess_ms, 3), "forward_images_per_s": forward}


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {BENCH_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def _device_memory(base_url: str) -> dict[str, float]:
    request = urllib.request.Request(f"{base_url}/metrics")
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    return {  # maas_device_memory_bytes{device="cuda:0"} 3.6e+08
        line.split('"', 2)[1]: round(float(line.rsplit(" ", 1)[1]) / 2**20, 1)
        for line in text.splitlines()
        if line.startswith("maas_device_memory_bytes{")
    }


def gateway(folder: Path, bodies: list[bytes], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    server = start_server(
        "maas",
        folder,
        work,
        bodies[0],
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        devices=args.device,
        dtype="auto",
    )
    try:
        base_url = server.predict_url.split("/v1/", 1)[0]
        described = _get_json(f"{base_url}/v1/models/bench")
        requests = [build_request(server.predict_url, body, headers=server.headers) for body in bodies]
        levels = []
        for concurrency in args.levels:
            result = asyncio.run(
                run_closed_loop(
                    server.predict_url,
                    requests,
                    concurrency=concurrency,
                    duration_s=args.duration,
                    warmup_s=min(3.0, args.duration),
                )
            )
            level = {
                "concurrency": concurrency,
                "throughput": round(result.throughput, 1),
                "p50_ms": round(result.percentile_ms(50), 2),
                "p99_ms": round(result.percentile_ms(99), 2),
                "errors": result.errors,
                "error_samples": result.error_samples,
            }
            print(f"  gateway c={concurrency}: {level}", flush=True)
            levels.append(level)
        return {
            "dtype": described.get("dtype"),
            "devices": described.get("devices"),
            "levels": levels,
            "device_memory_mib": _device_memory(base_url),
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    import torch

    args = _parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: dict[str, Any] = {"model": args.model, "device": describe_device(device)}
    print(f"device: {results['device']}", flush=True)
    folder = build_model(MODELS[args.model], args.cache_dir)
    bodies = jpeg_bodies()
    dtypes = dtypes_for(results["device"])
    results["precision"] = precision(folder, bodies, device, dtypes)
    print(f"precision against float32: {results['precision']}", flush=True)
    results["raw"] = raw_throughput(folder, bodies, device, dtypes, min_s=0.5 if args.quick else 2.0)
    print(f"raw: {results['raw']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="maas-gpu-") as work:
        results["gateway"] = gateway(folder, bodies, args, Path(work))
    raw16 = max(results["raw"]["forward_images_per_s"]["float16"].values())
    best = max(level["throughput"] for level in results["gateway"]["levels"])
    results["gateway_share_of_raw_float16_forward"] = round(best / raw16, 3)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    ok = results["gateway"]["dtype"] == ("float16" if device.type == "cuda" else "float32")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
