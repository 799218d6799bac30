"""loadtests/gpu_check.py's CPU mode: the whole check (precision, forward-only limit, the real
`maas serve` driven over HTTP in one process and with two workers, where the CPU went, the
summary) runs on the CPU with the tiny model, so that the script is ready for a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.serving.devices import dtype_name, resolve_dtype
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_the_gpu_check_runs_in_cpu_mode(tmp_path: Path) -> None:
    report = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "loadtests" / "gpu_check.py"), "--device", "cpu", "--quick"]
    command += ["--duration", "1", "--cache-dir", str(tmp_path / "models"), "--json", str(report)]
    command += ["--workers", "1,2"]  # one process, then a model process and two front-end workers
    command += ["--also-max-batch-size", "4"]  # and two workers with smaller batches
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(report.read_text(encoding="utf-8"))
    served = dtype_name(resolve_dtype("auto", torch.device("cpu")))
    for run, processes in (("gateway_workers_1", 1), ("gateway_workers_2", 4)):
        assert results[run]["dtype"] == served  # what `dtype: auto` picks on this CPU, from any worker
        [level] = results[run]["levels"]
        assert level["concurrency"] == 4 and level["errors"] == 0 and level["throughput"] > 0
        roles = [p["role"] for p in level["profile"]["processes"]]  # where the CPU time went
        assert "load generator" in roles and len(roles) >= 1 + processes, roles
        assert all(p["threads"] >= 1 for p in level["profile"]["processes"])  # OpenMP teams show here
    assert results["forward"]["best"][served]["images_per_s"] > 0
    assert "CUDA" in results["gpu_jpeg_decode"]["skipped"]  # nvJPEG's agreement: measured on a GPU only
    summary = results["summary"]
    assert summary["forward_limit"]["dtype"] == served
    assert summary["gateway_workers_2"]["share_of_forward_limit"] > 0
    alone = results["gateway_workers_2"]["model_process_alone"]  # its ceiling, HTTP aside
    assert alone["clients"] == 2 and alone["concurrency"] == 4 and alone["calls_per_s"] > 0
    assert alone["engine_ms_per_input"] > 0 and summary["gateway_workers_2"]["model_process_alone_share"] > 0
    smaller = results["gateway_workers_2_batch_4"]
    assert smaller["max_batch_size"] == 4 and results["gateway_workers_2"]["max_batch_size"] == 8
    assert smaller["levels"][0]["throughput"] > 0
    assert summary["gateway_workers_2_batch_4"]["best_throughput"] == smaller["levels"][0]["throughput"]
    assert results["gateway_workers_1"]["model_process_alone"] is None  # one process: no model process
    assert "litserve" in results  # measured where installed, else the reason it was skipped
    assert "levels" in results["litserve"] or "skipped" in results["litserve"]
