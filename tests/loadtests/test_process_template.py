"""loadtests/process_template.py: every process's memory, the start, a killed worker's and a killed
model process's return, for the processes forked from their template and spawned, in turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_both_ways_of_starting_the_processes_are_measured_process_by_process(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "loadtests" / "process_template.py"), "--model", "tiny"]
    command += [
        "--rounds",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--cache-dir",
        str(tmp_path / "models"),
    ]
    command += ["--json", str(tmp_path / "template.json")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| template (MAAS_PROCESS_TEMPLATE=true) |" in done.stdout
    rounds = json.loads((tmp_path / "template.json").read_text())["rounds"]
    roles = {name: sorted(p["role"] for p in result["processes"]) for name, [result] in rounds.items()}
    assert {"model process", "supervisor", "worker 0", "worker 1"} <= set(roles["spawned"])
    assert "template" not in roles["spawned"]
    assert set(roles["template"]) == set(roles["spawned"]) | {"template"}
    for [result] in rounds.values():
        assert result["throughput"] > 0 and result["restart_s"] > 0 and result["engine_back_s"] > 0
        assert all(p["uss"] > 0 and p["pss"] >= p["uss"] for p in result["processes"])
    # forked, a worker shares what it imported: less of its own than a spawned one holds
    assert rounds["template"][0]["worker_uss"] < rounds["spawned"][0]["worker_uss"] / 2
