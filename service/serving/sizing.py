"""How much memory a model needs: what device placement plans with."""

from __future__ import annotations

import contextlib
from pathlib import Path

from service.serving.manifests import ModelManifest
from service.serving.runtime import SourceError
from service.serving.runtime.sources import resolve_local_folder

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def estimate_bytes(manifest: ModelManifest, manifest_dir: Path) -> int | None:
    """About how much memory one replica needs: its weight files, scaled to the dtype asked for
    (weights are assumed stored in float32). None when the weights are not on disk (hub ids)."""
    try:
        folder = resolve_local_folder(manifest.source, manifest_dir)
    except SourceError:
        return None
    if folder is None:
        return None
    folders = [folder]
    if manifest.base_source is not None:  # a LoRA adapter: the merged model weighs what its base does
        with contextlib.suppress(SourceError):
            folders += [f for f in [resolve_local_folder(manifest.base_source, manifest_dir)] if f]
    stored = sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not stored:
        return None
    per_param = DTYPE_BYTES.get(manifest.dtype, 4)  # auto: float32 on CPU, less on CUDA
    return stored * per_param // 4
