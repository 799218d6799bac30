"""LitServe reference server for the benchmark: the same model and preprocessing as the gateway.

    python loadtests/ref_litserve.py --model-dir DIR --port P --max-batch-size 16 --max-delay-ms 5

Serves `POST /predict` with a raw JPEG body (`Content-Type: image/jpeg`) and answers the top-5
classes as JSON. One inference worker on the CPU (`workers_per_device=1`) with LitServe's own
dynamic batching (`max_batch_size`, `batch_timeout`); one API server process. `--device cuda:0
--dtype float16` runs the same on a GPU (the GPU check).
"""

# No `from __future__ import annotations` here: LitServe and FastAPI read the real annotation
# of `decode_request` (a raw `bytes` body) at run time.
import os
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import Body
from ref_common import ViTClassifier, server_args


class ViTAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: str, dtype: str = "float32", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir
        self.dtype = dtype

    def setup(self, device: str) -> None:
        self.classifier = ViTClassifier(self.model_dir, device, self.dtype)

    # `bytes` as a body parameter: FastAPI hands over the raw body for non-JSON content types,
    # and LitServe passes anything but a bare `Request` through to the worker untouched.
    def decode_request(self, request: Annotated[bytes, Body(media_type="image/jpeg")]) -> torch.Tensor:
        return self.classifier.preprocess(request)

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs  # predict takes the list and runs one forward pass over it

    def predict(self, x: list[torch.Tensor]) -> list[list[dict[str, Any]]]:
        return self.classifier.predict(x)

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": [output]}


def main() -> None:
    args = server_args(__doc__)
    api = ViTAPI(
        args.model_dir,
        args.dtype,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_delay_ms / 1000,
    )
    accelerator, _, index = args.device.partition(":")
    if accelerator == "cuda" and index:  # that one GPU (set before CUDA starts): LitServe's device 0
        os.environ["CUDA_VISIBLE_DEVICES"] = index
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=60)
    server.run(
        host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False
    )


if __name__ == "__main__":
    main()
