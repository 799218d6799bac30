"""The model process keeps host memory freed by one forward pass for the next: its passes stop
touching fresh pages (counted as the kernel's minor page faults), and an operator's own allocator
choice is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.serving.host_memory import keep_freed_host_memory, operator_tuned

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc on Linux")

# Page faults taken by forward passes of a ViT with DeiT-tiny's widths (its MLP activations are
# 4.8 MB a batch of 8), one thread, after warm-up passes; the first argument says whether to keep
# freed memory first.
_PASSES = """
import json, resource, sys
import torch
from transformers import ViTConfig, ViTForImageClassification
from service.serving.host_memory import keep_freed_host_memory

kept = sys.argv[1] == "keep" and keep_freed_host_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
config = ViTConfig(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=2,
                   num_attention_heads=3, intermediate_size=768, num_labels=10)
model = ViTForImageClassification(config).eval()
batch = torch.rand(8, 3, 224, 224)
with torch.inference_mode():
    for _ in range(5):
        model(pixel_values=batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        logits = model(pixel_values=batch).logits
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "logits": logits.tolist()}))
"""


def _passes(mode: str) -> dict[str, object]:
    env = {  # no allocator settings from outside
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_") and name not in ("LD_PRELOAD", "GLIBC_TUNABLES")
    }
    done = subprocess.run(
        [sys.executable, "-c", _PASSES, mode], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_forward_passes_reuse_the_memory_freed_by_the_last_one() -> None:
    default, kept = _passes("default"), _passes("keep")
    assert kept["kept"] is True
    # glibc by default gives the activations' pages back and faults them in again every pass
    assert default["faults"] > 5000, default["faults"]
    assert kept["faults"] < default["faults"] / 5, (kept["faults"], default["faults"])
    assert kept["logits"] == default["logits"]  # the same numbers, computed in kept memory


@pytest.mark.parametrize(
    ("environ", "chosen"),
    [
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
        ({"GLIBC_TUNABLES": "glibc.rtld.nns=2", "LD_PRELOAD": "libfoo.so"}, None),
    ],
)
def test_an_operators_allocator_settings_are_left_alone(environ: dict[str, str], chosen: str | None) -> None:
    assert operator_tuned(environ) == chosen


def test_nothing_is_set_where_the_operator_tuned_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_host_memory() is False
