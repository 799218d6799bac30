"""Loading models onto devices through adapters: `load_adapter` picks the adapter a manifest names."""

from __future__ import annotations

from pathlib import Path

import torch

from service.serving.manifests import ModelManifest
from service.serving.runtime.base import Classification, ModelAdapter, Output
from service.serving.runtime.sources import SourceError, resolve_source

__all__ = ["Classification", "ModelAdapter", "Output", "SourceError", "load_adapter"]


def load_adapter(
    manifest: ModelManifest,
    manifest_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    hub_timeout_s: float = 3.0,
) -> ModelAdapter:
    """Load one replica of `manifest` on `device`; raises with a readable reason on failure."""
    source = resolve_source(manifest.source, manifest_dir, hub_timeout_s=hub_timeout_s)
    if manifest.adapter == "torch":
        from service.serving.runtime.torch_adapter import load_torch_adapter

        return load_torch_adapter(manifest, source, device, dtype)
    from service.serving.runtime.transformers_adapter import load_transformers_adapter

    base = None
    if manifest.base_source is not None:
        base = resolve_source(manifest.base_source, manifest_dir, hub_timeout_s=hub_timeout_s)
    return load_transformers_adapter(manifest, source, device, dtype, base=base)
