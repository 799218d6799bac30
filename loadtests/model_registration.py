"""How fast a model registered through the admin API on one replica is servable on another.

    python loadtests/model_registration.py [--rounds 10] [--postgres URL] [--redis URL]

Starts two real `maas serve` replicas on one fresh PostgreSQL database (created on the server
`--postgres` names, dropped at the end) and one Redis, like two pods of one Deployment. Each
round registers a new model (the tiny ViT, `preload: true`) with `POST /v1/admin/models` on
replica A, then asks replica B to predict with it until it answers 200, and records the time
from A's answer to B's first 200 (B learns of the registration over Redis pub/sub, or from its
`MAAS_MODEL_SYNC_S` poll if a message were lost, and loads the model). Prints each round and the
median and the worst; the target is 2 s. docs/models.md records a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from servers import BENCH_KEY, start_server
from sqlalchemy import create_engine, make_url, text
from workload import MODELS, build_model, jpeg_bodies


def _call(url: str, body: bytes, method: str = "POST", content_type: str = "application/json") -> int:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Authorization", f"Bearer {BENCH_KEY}")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _database(server_url: str, name: str, *, drop: bool = False) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            verb = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" if drop else f"CREATE DATABASE {name}"
            connection.execute(text(verb))
    finally:
        engine.dispose()


def _round(a: str, b: str, model: Path, jpeg: bytes, index: int) -> float:
    """Register a model on replica `a`; seconds until replica `b` answers a prediction with it."""
    name = f"registered-{index}"
    manifest = {"name": name, "task": "image-classification", "source": str(model), "preload": True}
    assert _call(f"{a}/v1/admin/models", json.dumps(manifest).encode()) == 201
    registered = time.monotonic()
    while (status := _call(f"{b}/v1/models/{name}/predict", jpeg, content_type="image/jpeg")) != 200:
        if status not in (404, 503) or time.monotonic() - registered > 60:
            sys.exit(f"round {index}: replica B answered {status}")
    seconds = time.monotonic() - registered
    print(f"round {index}: servable on replica B {seconds * 1000:.0f} ms after A registered it")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path, help="write the rounds here as JSON")
    args = parser.parse_args()

    database = f"maas_registration_{uuid.uuid4().hex[:8]}"
    _database(args.postgres, database)
    database_url = make_url(args.postgres).set(database=database).render_as_string(hide_password=False)
    env = {"MAAS_DATABASE_URL": database_url, "MAAS_REDIS_URL": args.redis}
    servers = []
    try:
        with tempfile.TemporaryDirectory(prefix="maas-registration-") as work:
            root = Path(work)
            model = build_model(MODELS["tiny"], root / "cache")
            jpeg = jpeg_bodies(1)[0]
            for name in ("a", "b"):
                servers.append(
                    start_server(
                        "maas", model, root / name, jpeg, max_batch_size=8, max_delay_ms=2, maas_env=env
                    )
                )
            a, b = (s.predict_url.rsplit("/v1/", 1)[0] for s in servers)
            seconds = [_round(a, b, model, jpeg, index) for index in range(args.rounds)]
            median_ms, worst_ms = statistics.median(seconds) * 1000, max(seconds) * 1000
            print(
                f"registered on A -> servable on B: median {median_ms:.0f} ms, worst {worst_ms:.0f} ms "
                f"over {len(seconds)} rounds (target: 2000 ms)"
            )
            if args.json:
                args.json.write_text(json.dumps({"seconds": seconds}, indent=2), encoding="utf-8")
    finally:
        for server in servers:
            server.stop()
        _database(args.postgres, database, drop=True)


if __name__ == "__main__":
    main()
