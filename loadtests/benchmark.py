"""Benchmark the gateway against its raw limit and against LitServe and Ray Serve, in one run.

    python loadtests/benchmark.py --quick
    python loadtests/benchmark.py --models tiny,deit-tiny,vit-base --concurrency 1,4,16 --duration 10 \\
        --servers maas,litserve,rayserve --max-batch-size 16 --max-delay-ms 5 --json results.json

For each model (ViTs built from `ViTConfig`, see workload.py) it measures the raw limit in-process
(JPEG decode + image processor per image, plus the forward pass per image at the best batch size)
and its forward-only limit (no images at all: one batch per core side by side, one thread each,
which no server can pass in the same dtype with the same Linear kernels: on a CPU where the
gateway packs its float32 Linear layers for oneDNN, so does this limit), then starts each server
as a separate process with the same model and batch settings, drives it with the closed-loop
load generator at each concurrency, and prints throughput, p50/p90/p99 latency, errors and the
shares of both limits. A server that cannot be installed or started is reported and skipped.
The Markdown table at the end is the one recorded in docs/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import LoadResult, build_request, run_closed_loop
from servers import SERVERS, ServerUnavailable, gateway_settings, start_server
from workload import MODELS, RawLimit, build_model, cpu_name, jpeg_bodies, measure_raw_limit, weights_bytes


@dataclass
class Row:
    """One measured point: a server at one concurrency for one model."""

    model: str
    server: str
    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    pct_of_raw: float
    pct_of_forward: float  # of the forward-only limit (every core running a batch of its own)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, concurrency 1,16, 4 s each")
    parser.add_argument("--models", default="tiny,deit-tiny,vit-base", help=f"from {', '.join(MODELS)}")
    parser.add_argument("--concurrency", default="1,4,16", help="closed-loop clients, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"from {', '.join(SERVERS)}")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "maas-bench")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--maas-env",
        action="append",
        default=[],
        metavar="MAAS_NAME=VALUE",
        help="a gateway setting for the maas server, e.g. MAAS_PREPROCESS_PROCESSES=1 (repeatable)",
    )
    args = parser.parse_args(argv)
    args.maas_env = gateway_settings(parser, args.maas_env)
    if args.quick:
        args.models, args.concurrency = "tiny", "1,16"
        args.duration, args.warmup = min(args.duration, 4.0), min(args.warmup, 1.0)
    args.model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    unknown = [m for m in args.model_names if m not in MODELS] + [
        s for s in args.server_names if s not in SERVERS
    ]
    if unknown:
        parser.error(f"unknown model or server: {', '.join(unknown)}")
    return args


def _row(model: str, server: str, result: LoadResult, raw: RawLimit) -> Row:
    return Row(
        model,
        server,
        result.concurrency,
        round(result.throughput, 1),
        round(result.percentile_ms(50), 2),
        round(result.percentile_ms(90), 2),
        round(result.percentile_ms(99), 2),
        len(result.latencies_s),
        result.errors,
        round(100 * result.throughput / raw.images_per_s, 1),
        round(100 * result.throughput / raw.forward_only_images_per_s, 1),
    )


def _print_table(rows: list[Row]) -> None:
    heads = ("p50 ms", "p90 ms", "p99 ms")
    print(
        f"  {'server':<9} {'conc':>4} {'img/s':>8} "
        + " ".join(f"{h:>8}" for h in heads)
        + f" {'reqs':>6} {'errors':>6} {'% raw':>6} {'% fwd':>6}"
    )
    for r in rows:
        print(
            f"  {r.server:<9} {r.concurrency:>4} {r.throughput:>8.1f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.requests:>6} {r.errors:>6} {r.pct_of_raw:>5.1f}% {r.pct_of_forward:>5.1f}%"
        )


def markdown(rows: list[Row], raws: dict[str, RawLimit]) -> str:
    """The results as one Markdown table, with each model's raw and forward-only limits in rows of
    their own."""
    lines = [
        "| model | server | concurrency | img/s | p50 ms | p90 ms | p99 ms | errors | % of raw | % of fwd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, raw in raws.items():
        forward = raw.forward_only_images_per_s
        lines.append(
            f"| {model} | raw limit (pre {raw.preprocess_ms:.2f} ms + fwd {raw.forward_ms:.2f} ms/img "
            f"@ batch {raw.best_batch_size}, {raw.best_threads} thr) | | {raw.images_per_s:.1f} "
            f"| | | | | 100 % | {100 * raw.images_per_s / forward:.0f} % |"
        )
        lines.append(
            f"| {model} | forward-only limit ({raw.lanes} batches side by side, 1 thr each"
            f"{', Linear packed for oneDNN' if raw.onednn_linear else ''}) | | "
            f"{forward:.1f} | | | | | {100 * forward / raw.images_per_s:.0f} % | 100 % |"
        )
        for r in rows:
            if r.model == model:
                lines.append(
                    f"| {model} | {r.server} | {r.concurrency} | {r.throughput:.1f} | {r.p50_ms:.1f} | "
                    f"{r.p90_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {r.pct_of_raw:.0f} % | "
                    f"{r.pct_of_forward:.0f} % |"
                )
    return "\n".join(lines)


def _bench_server(
    name: str,
    model: str,
    folder: Path,
    bodies: list[bytes],
    raw: RawLimit,
    args: argparse.Namespace,
    work: Path,
) -> tuple[list[Row], dict[str, Any]]:
    started = time.monotonic()
    server = start_server(
        name,
        folder,
        work / name,
        bodies[0],
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        maas_env=args.maas_env,
    )
    info: dict[str, Any] = {"start_s": round(time.monotonic() - started, 1)}
    rows: list[Row] = []
    try:
        requests = [build_request(server.predict_url, body, headers=server.headers) for body in bodies]
        for level in args.levels:
            # A slow model at high concurrency needs a longer window: at least one full round of the
            # closed loop to warm up and three to measure, at the raw rate (else nothing completes).
            round_s = level / raw.images_per_s
            result = asyncio.run(
                run_closed_loop(
                    server.predict_url,
                    requests,
                    concurrency=level,
                    duration_s=max(args.duration, 3 * round_s),
                    warmup_s=max(args.warmup, round_s),
                )
            )
            rows.append(_row(model, name, result, raw))
            for sample in result.error_samples:
                print(f"  ! {name} c={level}: {sample}")
        rss, peak = server.rss_mb()
        info.update(rss_mb=round(rss, 1), peak_rss_mb=round(peak, 1))
    finally:
        server.stop()
    return rows, info


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows in logs too
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    bodies = jpeg_bodies()
    import torch

    print(
        f"maas-gateway benchmark: {platform.node()}, {os.cpu_count()} CPUs ({cpu_name()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )
    print(
        f"batching: max_batch_size {args.max_batch_size}, max_delay_ms {args.max_delay_ms}; "
        f"{len(bodies)} JPEGs ({min(map(len, bodies)) // 1024}-{max(map(len, bodies)) // 1024} KiB); "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per concurrency"
    )
    rows: list[Row] = []
    raws: dict[str, RawLimit] = {}
    servers_info: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as tmp:
        for model in args.model_names:
            folder = build_model(MODELS[model], args.cache_dir)
            raw = raws[model] = measure_raw_limit(folder, bodies)
            print(
                f"\n== {model}: weights {weights_bytes(folder) / 2**20:.1f} MiB; "
                f"raw limit {raw.images_per_s:.1f} img/s "
                f"= 1 / (preprocess {raw.preprocess_ms:.2f} ms + forward {raw.forward_ms:.2f} ms/img "
                f"@ batch {raw.best_batch_size}, {raw.best_threads} thread(s)); forward ms/img by batch: "
                + "; ".join(
                    f"{t} thread(s) " + ", ".join(f"{b}: {ms:.2f}" for b, ms in row.items())
                    for t, row in raw.forward_ms_by_threads.items()
                )
                + f"; forward-only limit {raw.forward_only_images_per_s:.1f} img/s "
                f"({raw.lanes} batches side by side, one thread each)"
            )
            model_rows: list[Row] = []
            for name in args.server_names:
                try:
                    found, info = _bench_server(name, model, folder, bodies, raw, args, Path(tmp) / model)
                except ServerUnavailable as exc:
                    print(f"  ! {name} skipped: {exc}")
                    servers_info[f"{model}/{name}"] = {"skipped": str(exc)[:2000]}
                    continue
                servers_info[f"{model}/{name}"] = info
                model_rows.extend(found)
                print(f"  {name}: ready in {info['start_s']} s, main process RSS {info.get('rss_mb')} MiB")
            _print_table(model_rows)
            rows.extend(model_rows)
    table = markdown(rows, raws)
    print("\n" + table)
    if args.json:
        payload = {
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": cpu_name(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            "settings": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | list)},
            "raw_limits": {m: {**asdict(r), "images_per_s": r.images_per_s} for m, r in raws.items()},
            "servers": servers_info,
            "results": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
                for r in rows
            ],
            "markdown": table,
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
