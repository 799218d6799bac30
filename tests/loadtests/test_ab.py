"""loadtests/ab.py: two settings served at once and driven in turns, each window, the medians and
the ratio reported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_two_settings_take_turns_and_the_ratio_is_reported(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "loadtests" / "ab.py"), "--rounds", "2", "--duration", "1"]
    command += ["--warmup", "0.5", "--concurrency", "2", "--cache-dir", str(tmp_path / "models")]
    command += ["--a", "MAAS_WORKERS=1", "--b", "MAAS_WORKERS=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "A: MAAS_WORKERS=1" in out and "B: MAAS_WORKERS=2" in out
    windows = re.findall(r"round (\d) ([AB]):\s+([\d.]+) img/s .* errors (\d+)", out)
    assert [(r, s) for r, s, _, _ in windows] == [("1", "A"), ("1", "B"), ("2", "B"), ("2", "A")]  # in turns
    assert all(float(rate) > 0 and errors == "0" for _, _, rate, errors in windows)
    assert re.search(r"B/A throughput: [\d.]+ \(median of the medians\); per round [\d.]+, [\d.]+", out)
