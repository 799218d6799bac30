"""The GPU check: the serving engine on a GPU, next to the model's forward-only limit and LitServe.

    python loadtests/gpu_check.py --json gpu.json                  # cuda:0, ViT-B/16, a few minutes
    python loadtests/gpu_check.py --compile --json gpu.json        # and the gateway with compile: true
    python loadtests/gpu_check.py --device cpu --quick             # the same steps on the CPU: a dry run

Steps, each printed as it ends:
1. the device: name, memory, whether bfloat16 is supported;
2. precision: the model (ViT-B/16 built from `ViTConfig`, see workload.py) on real JPEGs in float32
   and in float16 (and bfloat16 where supported): the largest difference of the softmax
   probabilities from float32, and whether the top-1 and top-5 labels agree; and the same for the
   gateway's preprocessing with JPEGs decoded on the GPU (nvJPEG, `gpu_jpeg_decode: true`, where
   torchvision is installed) against the CPU's decode;
3. the forward-only limit: images/s of the forward pass alone (the batch already on the device,
   `torch.cuda.synchronize` around it) for each dtype at each batch size, and the best; with
   `--compile` also the torch.compile'd forward in the gateway's dtype at the best batch size;
   and the JPEG decode + image processor cost per image on one CPU core;
4. the gateway: the real `maas serve --devices <device>` with `dtype: auto` (checked to be float16
   on CUDA), driven closed-loop over HTTP at each concurrency (default 64 and 256): throughput,
   p50 and p99, the device memory it reports, and the share of the forward-only limit in its dtype
   at the best batch size; with `--compile`, the same again with `compile: true` in the manifest;
   with `MAAS_WORKERS` above 1, then its model process alone, without HTTP (engine_ceiling.py: one
   connection per worker sending what workers send, at the highest concurrency): the ceiling the
   workers meet, with the model process's CPU per input;
5. LitServe on the same device in the same dtype (when installed: the `bench` extra), same
   batching and concurrency, and the gateway's throughput over LitServe's.

On a machine without the gateway's dependencies (the lent GPU machines have torch and transformers
but not FastAPI and the rest) carry them as wheels: `scripts/gpu_wheels.sh` downloads them into
`.whl/`, and loadtests/README.md gives the whole command.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from cpu_profile import CpuProfile
from engine_ceiling import drive_engine, find_engine, record_profile
from loadgen import build_request, run_closed_loop
from servers import BENCH_KEY, RunningServer, ServerUnavailable, gateway_settings, start_server
from workload import MODELS, _timed_loop, build_model, jpeg_bodies

GPU_BATCH_SIZES = (1, 16, 64, 128, 256)
QUICK_BATCH_SIZES = (1, 4, 16)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for a dry run")
    parser.add_argument("--model", choices=sorted(MODELS), help="default vit-base (--quick: tiny)")
    parser.add_argument("--concurrency", help="closed-loop clients, comma-separated (default 64,256)")
    parser.add_argument("--duration", type=float, help="measured seconds per concurrency (default 10)")
    parser.add_argument("--max-batch-size", type=int, help="the gateway's and LitServe's (default 128)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--also-max-batch-size",
        default="",
        help="also the gateway (with the most --workers) at these max_batch_size values, comma-separated",
    )
    parser.add_argument("--compile", action="store_true", help="also the gateway with compile: true")
    parser.add_argument("--no-litserve", action="store_true", help="skip LitServe even where installed")
    parser.add_argument(
        "--maas-env", action="append", default=[], metavar="MAAS_NAME=VALUE", help="a gateway setting"
    )
    parser.add_argument(
        "--workers",
        default="",
        help="MAAS_WORKERS values, comma-separated: one gateway run each (default: one run)",
    )
    parser.add_argument(
        "--gateway-only", action="store_true", help="skip the precision and forward-only steps (a rerun)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, concurrency 4, 3 s: a dry run")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "maas-bench")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--drivers",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 1) // 4)),
        help="processes driving the model process alone (default: a quarter of the cores, 1 to 4)",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="py-spy records of the model process (highest concurrency, and alone) into this folder",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.model = args.model or ("tiny" if quick else "vit-base")
    args.concurrency = args.concurrency or ("4" if quick else "64,256")
    args.duration = args.duration if args.duration is not None else (3.0 if quick else 10.0)
    args.max_batch_size = args.max_batch_size or (8 if quick else 128)
    args.batch_sizes = QUICK_BATCH_SIZES if quick else GPU_BATCH_SIZES
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.env = gateway_settings(parser, args.maas_env)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    args.also_max_batch_size = [int(s) for s in args.also_max_batch_size.split(",") if s.strip()]
    return args


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    try:  # with torchvision (the `gpu` extra) the gateway decodes JPEGs on a CUDA device
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
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
    k = min(5, reference.shape[-1])
    topk = reference.topk(k, dim=-1).indices
    report: dict[str, Any] = {}
    for name in dtypes[1:]:
        other = probabilities[name]
        report[name] = {
            "max_abs_probability_diff": float((other - reference).abs().max()),
            "top1_agreement": float((other.argmax(-1) == reference.argmax(-1)).float().mean()),
            f"top{k}_agreement": float((other.topk(k, dim=-1).indices == topk).all(-1).float().mean()),
        }
    return report


def gpu_decode_agreement(folder: Path, bodies: list[bytes], device: Any) -> dict[str, Any]:
    """The model's answers with JPEGs decoded on the device (nvJPEG: a manifest's
    `gpu_jpeg_decode: true`) against its answers with the CPU's decode (the default), on the same
    real photos through the gateway's own preprocessing, in float32."""
    import torch

    from service.serving.inputs import ImageLimits, RawInput
    from service.serving.manifests import ModelManifest
    from service.serving.preprocess import prepare_inputs
    from service.serving.runtime import load_adapter

    limits = ImageLimits(max_pixels=10**8, max_aspect_ratio=32)
    inputs = [RawInput(i, body) for i, body in enumerate(bodies)]
    answers = []
    for on_device in (False, True):
        manifest = ModelManifest.model_validate(
            {"name": "bench", "task": "image-classification", "source": str(folder), "dtype": "float32"}
            | {"gpu_jpeg_decode": on_device}
        )
        adapter: Any = load_adapter(manifest, folder, device, torch.float32)
        if on_device and adapter.jpeg_decoder is None:
            return {"skipped": adapter.jpeg_decoding}
        features = prepare_inputs(adapter, "image", inputs, limits, deadline=float("inf"))
        scores = adapter.predict(features, top_k=adapter.num_labels)  # every class: no near-tie ranking
        answers.append([{c.label: c.score for c in answer} for answer in scores])
    pairs = list(zip(*answers, strict=True))  # (CPU decode, GPU decode) per image
    return {
        "images": len(bodies),
        "max_abs_probability_diff": max(abs(cpu[label] - gpu[label]) for cpu, gpu in pairs for label in cpu),
        "top1_agreement": sum(max(c, key=c.get) == max(g, key=g.get) for c, g in pairs) / len(pairs),
    }


def forward_limit(
    folder: Path, bodies: list[bytes], device: Any, dtypes: list[str], args: argparse.Namespace, served: str
) -> dict[str, Any]:
    """Forward-only images/s per dtype and batch size, the best of each; preprocessing ms per image
    on one core; with --compile, the compiled forward in `served` (the gateway's dtype) at its best
    batch size."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    min_s = 0.5 if args.quick else 2.0
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
    top_k = min(5, MODELS[args.model].num_labels)

    def images_per_s(forward: Any, dtype: Any, size: int) -> float:
        batch = sample.repeat(size, 1, 1, 1).to(device, dtype)

        def step() -> None:
            with torch.inference_mode():
                forward(batch).softmax(-1).topk(top_k, dim=-1)
            _sync(device)

        return round(size / _timed_loop(step, min_s, 3, repeats=2), 1)

    by_dtype: dict[str, dict[int, float]] = {}
    report: dict[str, Any] = {"preprocess_ms_per_image_one_core": round(preprocess_ms, 3)}
    for name in dtypes:
        dtype = getattr(torch, name)
        model = AutoModelForImageClassification.from_pretrained(folder, dtype=dtype).to(device).eval()

        def eager(pixels: torch.Tensor, model: Any = model) -> torch.Tensor:
            return model(pixel_values=pixels).logits  # type: ignore[no-any-return]

        row = by_dtype[name] = {size: images_per_s(eager, dtype, size) for size in args.batch_sizes}
        if args.compile and name == served:
            best = max(row, key=lambda size: row[size])
            compiled = torch.compile(eager, dynamic=False)
            started = time.perf_counter()
            with torch.inference_mode():
                compiled(sample.repeat(best, 1, 1, 1).to(device, dtype))
            report["compiled"] = {
                "dtype": name,
                "batch_size": best,
                "compile_s": round(time.perf_counter() - started, 1),
                "images_per_s": images_per_s(compiled, dtype, best),
            }
        del model
    report["forward_images_per_s"] = by_dtype
    report["best"] = {
        name: {"batch_size": max(row, key=lambda size: row[size]), "images_per_s": max(row.values())}
        for name, row in by_dtype.items()
    }
    return report


def _get_json(url: str, authorized: bool = True) -> Any:
    headers = {"Authorization": f"Bearer {BENCH_KEY}"} if authorized else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
        return json.load(answer)


def _device_memory(base_url: str) -> dict[str, float]:
    with urllib.request.urlopen(urllib.request.Request(f"{base_url}/metrics"), timeout=10) as answer:
        text = answer.read().decode()
    return {  # maas_device_memory_bytes{device="cuda:0"} 3.6e+08
        line.split('"', 2)[1]: round(float(line.rsplit(" ", 1)[1]) / 2**20, 1)
        for line in text.splitlines()
        if line.startswith("maas_device_memory_bytes{")
    }


def drive(
    server: RunningServer,
    bodies: list[bytes],
    args: argparse.Namespace,
    profile: tuple[int, Path] | None = None,
) -> list[dict[str, Any]]:
    """Closed-loop HTTP load at each concurrency: throughput, p50, p99, errors. With `profile`
    (a pid and a file), py-spy records that process over the highest concurrency."""
    requests = [build_request(server.predict_url, body, headers=server.headers) for body in bodies]
    levels = []
    for concurrency in args.levels:
        recorder: subprocess.Popen[bytes] | None = None
        with CpuProfile(server.process.pid) as profile_cpu:  # warm-up included
            if profile is not None and concurrency == max(args.levels):
                recorder = record_profile(*profile, args.duration)
            result = asyncio.run(
                run_closed_loop(
                    server.predict_url,
                    requests,
                    concurrency=concurrency,
                    duration_s=args.duration,
                    warmup_s=min(3.0, args.duration),
                )
            )
        if recorder is not None:
            recorder.wait(timeout=60)
        level = {
            "concurrency": concurrency,
            "throughput": round(result.throughput, 1),
            "p50_ms": round(result.percentile_ms(50), 2),
            "p99_ms": round(result.percentile_ms(99), 2),
            "errors": result.errors,
            "error_samples": result.error_samples,
            "profile": profile_cpu.report(),
        }
        print(f"  {server.name} c={concurrency}: {level}", flush=True)
        levels.append(level)
    return levels


def _start(
    name: str,
    folder: Path,
    bodies: list[bytes],
    args: argparse.Namespace,
    work: Path,
    max_batch_size: int | None = None,
    **options: Any,
) -> RunningServer:
    """Server `name` on the device, with the check's batching (`max_batch_size` in its place)."""
    return start_server(
        name,
        folder,
        work,
        bodies[0],
        max_batch_size=max_batch_size or args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        devices=args.device,
        **options,
    )


def gateway(
    folder: Path,
    bodies: list[bytes],
    args: argparse.Namespace,
    work: Path,
    *,
    compile: bool,
    workers: int | None,
    max_batch_size: int | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    server = _start(
        "maas",
        folder,
        bodies,
        args,
        work,
        max_batch_size,
        dtype="auto",
        maas_env={**args.env, **({"MAAS_WORKERS": str(workers)} if workers else {})},
        max_queue=max(256, 4 * max(args.levels)),  # room for every client twice over: no 503s
        compile=compile,
        start_timeout_s=900.0 if compile else 240.0,
    )
    try:
        base_url = server.predict_url.split("/v1/", 1)[0]
        described = _get_json(f"{base_url}/v1/models/bench")
        ready_s = round(time.perf_counter() - started, 1)
        spy = args.profile_dir
        tag = f"workers{workers or 1}{'-compiled' if compile else ''}"
        tag += f"-batch{max_batch_size}" if max_batch_size else ""
        several = workers is not None and workers > 1  # a model process apart from the workers
        http_profile = None
        if spy:  # the process that runs the model: its model process, or the one gateway process
            runs_model = find_engine(server.process.pid)[0].pid if several else server.process.pid
            http_profile = (runs_model, spy / f"{tag}-http.txt")
        levels = drive(server, bodies, args, http_profile)
        alone = None
        if several:  # the model process's own ceiling, HTTP aside
            alone = drive_engine(
                server.process.pid,
                bodies[0],
                clients=workers,
                concurrency=max(args.levels),
                duration_s=args.duration,
                warmup_s=min(3.0, args.duration),
                drivers=args.drivers,
                profile=spy / f"{tag}-alone.txt" if spy else None,
            )
            print(f"  model process alone: {alone}", flush=True)
        return {
            "workers": workers,
            "max_batch_size": max_batch_size or args.max_batch_size,
            "compile": described.get("compile"),
            "dtype": described.get("dtype"),
            "devices": described.get("devices"),
            "ready_s": ready_s,
            "levels": levels,
            "model_process_alone": alone,
            "device_memory_mib": _device_memory(base_url),
        }
    finally:
        server.stop()


def litserve(
    folder: Path, bodies: list[bytes], args: argparse.Namespace, work: Path, dtype: str
) -> dict[str, Any]:
    if args.no_litserve:
        return {"skipped": "--no-litserve"}
    try:
        server = _start("litserve", folder, bodies, args, work, dtype=dtype)
    except ServerUnavailable as exc:
        return {"skipped": str(exc).splitlines()[0]}
    try:
        return {"dtype": dtype, "levels": drive(server, bodies, args)}
    finally:
        server.stop()


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Each gateway run's best throughput as a share of the forward-only limit in its dtype (at the
    best batch size), and over LitServe's best."""
    runs = [run for run in results if run.startswith("gateway")]
    served = results[runs[0]]["dtype"]
    best_by_dtype = results.get("forward", {}).get("best", {})
    limit = best_by_dtype.get(served, {}).get("images_per_s")
    lit_levels = results["litserve"].get("levels") or []
    lit_best = max((level["throughput"] for level in lit_levels), default=None)
    summary: dict[str, Any] = {"forward_limit": {"dtype": served, **best_by_dtype.get(served, {})}}
    for run in runs:
        best = max(level["throughput"] for level in results[run]["levels"])
        alone = results[run].get("model_process_alone")
        summary[run] = {
            "best_throughput": best,
            "share_of_forward_limit": round(best / limit, 3) if limit else None,
            "over_litserve": round(best / lit_best, 2) if lit_best else None,
            "model_process_alone_share": round(alone["calls_per_s"] / limit, 3) if alone and limit else None,
        }
    summary["litserve_best_throughput"] = lit_best
    return summary


def main(argv: list[str] | None = None) -> int:
    import torch

    from service.serving.devices import dtype_name, resolve_dtype

    args = _parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    expected = dtype_name(resolve_dtype("auto", device))  # float16 on CUDA
    results: dict[str, Any] = {"model": args.model, "device": describe_device(device)}
    print(f"device: {results['device']}", flush=True)
    folder = build_model(MODELS[args.model], args.cache_dir)
    bodies = jpeg_bodies()
    dtypes = dtypes_for(results["device"])
    if not args.gateway_only:
        results["precision"] = precision(folder, bodies, device, dtypes)
        print(f"precision against float32: {results['precision']}", flush=True)
        results["gpu_jpeg_decode"] = gpu_decode_agreement(folder, bodies, device)
        print(f"nvJPEG against the CPU's decode: {results['gpu_jpeg_decode']}", flush=True)
        results["forward"] = forward_limit(
            folder, bodies, device, sorted({*dtypes, expected}), args, expected
        )
        print(f"forward-only: {results['forward']}", flush=True)
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maas-gpu-") as work:
        for workers in args.workers or [None]:
            name = "gateway" if workers is None else f"gateway_workers_{workers}"
            results[name] = gateway(folder, bodies, args, Path(work) / name, compile=False, workers=workers)
        if args.compile:  # with the most workers asked for
            most = max(args.workers, default=None)
            compiled = gateway(folder, bodies, args, Path(work) / "compiled", compile=True, workers=most)
            results["gateway_compiled"] = compiled
            print(f"compile: {compiled['compile']}", flush=True)
        for size in args.also_max_batch_size:  # with the most workers asked for
            most = max(args.workers, default=None)
            name = f"gateway_workers_{most or 1}_batch_{size}"
            results[name] = gateway(
                folder, bodies, args, Path(work) / name, compile=False, workers=most, max_batch_size=size
            )
        results["litserve"] = litserve(folder, bodies, args, Path(work) / "litserve", expected)
    results["summary"] = summarize(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    runs = [results[run] for run in results if run.startswith("gateway")]
    ok = all(run["dtype"] == expected and not any(level["errors"] for level in run["levels"]) for run in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
