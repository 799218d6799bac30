"""loadtests/engine_ceiling.py: calls sent to a real model process as front-end workers send them,
answered, with the model process's CPU per input reported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_the_model_process_answers_the_calls_and_its_cpu_is_reported(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "loadtests" / "engine_ceiling.py"), "--duration", "1"]
    command += ["--warmup", "0.5", "--clients", "2", "--drivers", "2", "--concurrency", "4"]
    command += ["--cache-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(
        r"2 clients \(2 driver processes\), 4 calls in flight, 1 s: ([\d.]+) calls/s .* "
        r"model process ([\d.]+) cores, ([\d.]+) ms of CPU per input",
        done.stdout,
    )
    assert found, done.stdout
    calls, cores, per_input = (float(g) for g in found.groups())
    assert calls > 0 and cores > 0 and per_input > 0
