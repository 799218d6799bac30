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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import LoadResult, build_request, run_closed_loop
from servers import RunningServer, start_server, tenant_key
from workload import phase_model, phase_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)
    parser.add_argument("--flood-concurrency", type=int, default=24)
    parser.add_argument("--light-concurrency", type=int, default=1)
    return parser.parse_args(argv)


async def _phases(
    server: RunningServer, bodies: list[bytes], args: argparse.Namespace
) -> dict[str, LoadResult]:
    url = server.predict_url
    light_key, flood_key = await tenant_key(server, "light"), await tenant_key(server, "flood")
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
    folder, bodies = phase_model(args)
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
