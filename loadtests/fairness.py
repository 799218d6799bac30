"""Fair sharing under a flood: one tenant floods a model while another sends a steady light load.

    python loadtests/fairness.py --model deit-tiny --duration 10

For MAAS_FAIR_QUEUEING on and then off, it starts a real `maas serve` (servers.py), makes two
tenants with a key each, measures the light tenant alone (`--light-concurrency` closed-loop
clients), then the same light load while the flooding tenant runs `--flood-concurrency` (24)
closed-loop clients, and prints the light tenant's p50/p99 alone and under flood, and the ratio
of the p99s (the target: at most 3x with fair queueing on). docs/serving.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import LoadResult, build_request, run_closed_loop, send_once
from servers import RunningServer, start_server
from workload import MODELS, build_model, jpeg_bodies


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit-tiny", choices=sorted(MODELS))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not recorded before each phase")
    parser.add_argument("--flood-concurrency", type=int, default=24)
    parser.add_argument("--light-concurrency", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "maas-bench")
    return parser.parse_args(argv)


async def _tenant_key(server: RunningServer, name: str) -> dict[str, str]:
    """A new tenant `name` and a key of its own, made through the admin API."""
    base = server.predict_url.split("/v1/")[0]
    for path, body in (
        (f"{base}/v1/admin/tenants", {"name": name}),
        (f"{base}/v1/admin/tenants/{name}/keys", {}),
    ):
        raw = build_request(
            path, json.dumps(body).encode(), content_type="application/json", headers=server.headers
        )
        response = await send_once(path, raw)
        if response.status != 201:
            raise RuntimeError(f"{path}: {response.status} {response.body[:200]!r}")
    return {"Authorization": f"Bearer {json.loads(response.body)['key']}"}


async def _phases(
    server: RunningServer, bodies: list[bytes], args: argparse.Namespace
) -> dict[str, LoadResult]:
    url = server.predict_url
    light_key, flood_key = await _tenant_key(server, "light"), await _tenant_key(server, "flood")
    light = [build_request(url, b, headers=light_key) for b in bodies]
    flood = [build_request(url, b, headers=flood_key) for b in bodies]

    def load(requests: list[bytes], concurrency: int) -> asyncio.Future[LoadResult]:
        return asyncio.ensure_future(
            run_closed_loop(
                url, requests, concurrency=concurrency, duration_s=args.duration, warmup_s=args.warmup
            )
        )

    alone = await load(light, args.light_concurrency)
    under, flooding = await asyncio.gather(
        load(light, args.light_concurrency), load(flood, args.flood_concurrency)
    )
    return {"alone": alone, "flood": under, "flooder": flooding}


def _line(fair: bool, results: dict[str, LoadResult]) -> str:
    alone, flood, flooder = results["alone"], results["flood"], results["flooder"]
    ratio = flood.percentile_ms(99) / alone.percentile_ms(99)
    return (
        f"| {'on' if fair else 'off'} | {alone.percentile_ms(50):.1f} | {alone.percentile_ms(99):.1f} "
        f"| {flood.percentile_ms(50):.1f} | {flood.percentile_ms(99):.1f} | {ratio:.1f}x "
        f"| {flooder.throughput:.0f} | {flood.errors + alone.errors} / {flooder.errors} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    folder = build_model(MODELS[args.model], args.cache_dir)
    bodies = jpeg_bodies()
    lines = []
    with tempfile.TemporaryDirectory(prefix="maas-fairness-") as tmp:
        for fair in (True, False):
            server = start_server(
                "maas",
                folder,
                Path(tmp) / ("fair" if fair else "fifo"),
                bodies[0],
                max_batch_size=args.max_batch_size,
                max_delay_ms=args.max_delay_ms,
                maas_env={"MAAS_FAIR_QUEUEING": str(fair).lower(), "MAAS_METERING": "false"},
            )
            try:
                results = asyncio.run(_phases(server, bodies, args))
            finally:
                server.stop()
            for name, result in results.items():
                for sample in result.error_samples:
                    print(f"  ! fair={fair} {name}: {sample}")
            lines.append(_line(fair, results))
            print(lines[-1], flush=True)
    print(
        f"\nmodel {args.model}, batch {args.max_batch_size}/{args.max_delay_ms} ms, light "
        f"{args.light_concurrency} client(s), flood {args.flood_concurrency} clients, "
        f"{args.duration:g} s phases\n"
    )
    print(
        "| fair queueing | alone p50 ms | alone p99 ms | flood p50 ms | flood p99 ms | p99 ratio "
        "| flood req/s | errors light / flood |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
