"""The memory one request may cost (docs/serving.md, "Memory per request"), measured as the
growth of peak RSS in a process of its own (tests/api/memory_probe.py), with the default limits:
hostile requests that used to cost 1.4-1.9 GB are refused for almost nothing, and the largest
valid image stays within the documented bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from typing import Any

import pytest

from service.settings import Settings
from tests.api.test_bad_inputs import png_with
from tests.conftest import REPO, image_bytes, write_manifest
from tests.serving.runtime.test_torch_adapter import write_colour_manifest, write_colour_model
from tests.training.zips import colour_dataset, zero_bomb

DEFAULTS = Settings.model_construct()  # the defaults, whatever MAAS_* the shell has set
REFUSED_MB = 50  # a refusal costs next to nothing (measured: 0-5 MB)
FAST_MB = 250  # 4 bytes a pixel of the largest image, one image at a time (measured: 162 MB)
EXACT_MB = 700  # a transformers image processor's own copies on top (measured: 546 MB)


def largest_png(pixels: int) -> bytes:
    """A square RGB PNG of at most `pixels` pixels, compressed to well under a megabyte."""
    side = int(pixels**0.5)
    compressor = zlib.compressobj(1)
    row = bytes(1 + 3 * side)
    return png_with(side, side, b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("memory")
    models = workdir / "models"
    write_colour_model(models)
    write_colour_manifest(models)
    for name, preprocessing in [("vit", "fast"), ("vit-exact", "exact")]:
        write_manifest(
            models,
            name,
            f"name: {name}\ntask: image-classification\nsource: {REPO / 'models' / 'digits-vit'}\n"
            f"preprocessing: {preprocessing}\n",
        )
    inputs = workdir / "inputs"
    inputs.mkdir()
    (inputs / "small.png").write_bytes(image_bytes())
    (inputs / "thin.png").write_bytes(image_bytes(size=(1, 6000)))
    (inputs / "largest.png").write_bytes(largest_png(DEFAULTS.max_image_pixels))
    (inputs / "small.zip").write_bytes(colour_dataset(per_label=5))
    (inputs / "bomb.zip").write_bytes(zero_bomb(10**9))
    probe = subprocess.run(
        [sys.executable, "-m", "tests.api.memory_probe", str(workdir)],
        cwd=REPO,
        env={name: value for name, value in os.environ.items() if not name.startswith("MAAS_")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    results: dict[str, dict[str, Any]] = json.loads(probe.stdout.splitlines()[-1])
    return results


def test_a_thin_image_is_refused_before_it_is_resized(measured: dict[str, dict[str, Any]]) -> None:
    thin = measured["thin-image"]
    assert thin["status"] == 422 and "image is 1x6000" in thin["body"]["error"]["message"]
    assert thin["growth_mb"] < REFUSED_MB  # it was 1.4 GB: resized to 256x1536000 first


def test_a_zip_bomb_is_refused_without_decompressing_it(measured: dict[str, dict[str, Any]]) -> None:
    bomb = measured["zip-bomb"]
    assert bomb["status"] == 422 and "unpacks to 1000000000 bytes" in bomb["body"]["error"]["message"]
    assert bomb["growth_mb"] < REFUSED_MB  # it was 1.9 GB: the entry read whole


def test_an_upload_is_refused_by_its_length_or_cut_off_at_the_limit(
    measured: dict[str, dict[str, Any]],
) -> None:
    declared, chunked = measured["declared-300mb"], measured["chunked-300mb"]
    limit = DEFAULTS.max_upload_bytes + 64 * 1024
    assert declared["status"] == chunked["status"] == 413
    assert declared["sent"] == 0  # refused from Content-Length, nothing read
    assert limit < chunked["sent"] <= limit + 1024 * 1024  # read to the limit, then stopped
    assert declared["growth_mb"] < REFUSED_MB and chunked["growth_mb"] < REFUSED_MB


def test_the_largest_valid_image_stays_within_the_documented_bound(
    measured: dict[str, dict[str, Any]],
) -> None:
    fast = [measured["largest-image-torch"], measured["largest-image-vit"]]
    exact = measured["largest-image-vit-exact"]
    assert [case["status"] for case in [*fast, exact]] == [200, 200, 200]
    assert all(case["growth_mb"] < FAST_MB for case in fast), fast
    assert exact["growth_mb"] < EXACT_MB
