"""Interactive latency beside a running batch job: does a big batch job stay out of the way?

    python loadtests/batch_job.py --model deit-tiny --images 2000 --duration 10

Starts a real `maas serve` (servers.py), makes a tenant, measures its interactive p50/p99 alone
(`--concurrency` closed-loop clients), then uploads a zip of `--images` photos (purpose `batch`),
creates a batch job on the same model and measures the same interactive load while the job runs,
then waits for the job to complete. Prints both p99s, their ratio (the target: at most 1.2x),
how many inputs the job processed during the measurement and how long it took in all.
docs/batches.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import build_request, run_closed_loop, send_once
from servers import RunningServer, start_server, tenant_key
from workload import phase_model, phase_parser

BOUNDARY = "maasbatchloadtest"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)
    parser.add_argument("--images", type=int, default=2000, help="inputs of the batch job")
    parser.add_argument("--concurrency", type=int, default=1, help="interactive closed-loop clients")
    parser.add_argument(
        "--in-flight", type=int, default=2, help="MAAS_BATCH_IN_FLIGHT: the job's inputs queued at once"
    )
    return parser.parse_args(argv)


def _zip(bodies: list[bytes], count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"img{i:05d}.jpg", bodies[i % len(bodies)])
    return buffer.getvalue()


async def _call(url: str, body: bytes, content_type: str, key: dict[str, str], method: str = "POST") -> Any:
    response = await send_once(
        url, build_request(url, body, method=method, content_type=content_type, headers=key)
    )
    if response.status not in (200, 201):
        raise RuntimeError(f"{method} {url}: {response.status} {response.body[:300]!r}")
    return json.loads(response.body)


async def _run(server: RunningServer, bodies: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    url = server.predict_url
    base = url.split("/v1/")[0]
    key = await tenant_key(server, "interactive")
    requests = [build_request(url, b, headers=key) for b in bodies]

    def load() -> Any:
        return run_closed_loop(
            url, requests, concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup
        )

    alone = await load()
    multipart = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="photos.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        + _zip(bodies, args.images)
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    file = await _call(f"{base}/v1/files", multipart, f"multipart/form-data; boundary={BOUNDARY}", key)
    created = time.monotonic()
    job = await _call(
        f"{base}/v1/batches",
        json.dumps({"model": "bench", "input_file": file["id"]}).encode(),
        "application/json",
        key,
    )
    job_url = f"{base}/v1/batches/{job['id']}"
    beside = await load()
    during = await _call(job_url, b"", "", key, method="GET")
    done = during
    while done["status"] in ("queued", "running"):
        await asyncio.sleep(0.5)  # a poll interval
        done = await _call(job_url, b"", "", key, method="GET")
    return {
        "alone": alone,
        "beside": beside,
        "processed_during": during["counts"]["completed"] + during["counts"]["failed"],
        "done": done,
        "job_s": time.monotonic() - created,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder, bodies = phase_model(args)
    with tempfile.TemporaryDirectory(prefix="maas-batch-job-") as tmp:
        server = start_server(
            "maas",
            folder,
            Path(tmp),
            bodies[0],
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            maas_env={"MAAS_METERING": "false", "MAAS_BATCH_IN_FLIGHT": str(args.in_flight)},
        )
        try:
            result = asyncio.run(_run(server, bodies, args))
        finally:
            server.stop()
    alone, beside, done = result["alone"], result["beside"], result["done"]
    ratio = beside.percentile_ms(99) / alone.percentile_ms(99)
    print(
        f"\nmodel {args.model}, batch {args.max_batch_size}/{args.max_delay_ms} ms, {args.concurrency} "
        f"interactive client(s), {args.duration:g} s phases, a job of {args.images} images, "
        f"{args.in_flight} in flight\n"
    )
    print("| interactive | p50 ms | p99 ms | req/s | errors |")
    print("|---|---|---|---|---|")
    for name, run in (("alone", alone), ("beside the batch job", beside)):
        print(
            f"| {name} | {run.percentile_ms(50):.1f} | {run.percentile_ms(99):.1f} | {run.throughput:.0f} "
            f"| {run.errors} |"
        )
    print(
        f"\np99 ratio {ratio:.2f}x; the job processed {result['processed_during']} inputs by the end of "
        f"the measurement and ended {done['status']} ({done['counts']}) {result['job_s']:.0f} s after it "
        "was created"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
