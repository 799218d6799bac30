"""The SDK installs into a fresh virtual environment with httpx only (no torch) and runs."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installs_in_a_fresh_venv_without_torch_and_runs(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(CLIENT)], check=True, timeout=300)
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout.lower()
    assert "httpx==" in installed and "torch" not in installed and "pillow" not in installed
    probe = "import maas_client, sys; assert 'PIL' not in sys.modules; print(maas_client.__version__)"
    version = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout
    assert version.strip() == "0.1.0"
    for command in (
        [str(env_dir / "bin" / "maas-client"), "--help"],
        [str(python), "-m", "maas_client", "--help"],
    ):
        shown = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        assert "predict" in shown and "fine-tunes" in shown
    assert sys.prefix != str(env_dir)
