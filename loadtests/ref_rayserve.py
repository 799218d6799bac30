"""Ray Serve reference server for the benchmark: the same model and preprocessing as the gateway.

    python loadtests/ref_rayserve.py --model-dir DIR --port P --max-batch-size 16 --max-delay-ms 5

Serves `POST /predict` with a raw JPEG body and answers the top-5 classes as JSON. One replica
with `@serve.batch`; Ray is started with 2 CPUs (this machine's cores), the replica asks for 1.
Runs until SIGTERM or SIGINT, then shuts Serve and Ray down.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from ray import serve
from ref_common import ViTClassifier, server_args
from starlette.requests import Request
from starlette.responses import JSONResponse


def build_app(model_dir: str, max_batch_size: int, max_delay_ms: float) -> Any:
    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
    class ViTDeployment:
        def __init__(self) -> None:
            self.classifier = ViTClassifier(model_dir)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_delay_ms / 1000)
        async def predict_batch(self, features: list[torch.Tensor]) -> list[list[dict[str, Any]]]:
            return self.classifier.predict(features)

        async def __call__(self, request: Request) -> JSONResponse:
            features = self.classifier.preprocess(await request.body())
            return JSONResponse({"predictions": [await self.predict_batch(features)]})

    return ViTDeployment.bind()  # type: ignore[attr-defined]


def main() -> None:
    args = server_args(__doc__)

    import ray

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build_app(args.model_dir, args.max_batch_size, args.max_delay_ms), route_prefix="/predict")
    print("ready", flush=True)
    stop.wait()
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


if __name__ == "__main__":
    main()
