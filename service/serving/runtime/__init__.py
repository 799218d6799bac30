"""Loading models onto devices through adapters: `load_adapter` picks the adapter a manifest names."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from service.serving.devices import dtype_reason
from service.serving.manifests import ModelManifest
from service.serving.runtime.base import Classification, ModelAdapter, Output
from service.serving.runtime.cpu_linear import CpuLinear, LinearKernels, onednn_wanted, pack_checked
from service.serving.runtime.sources import SourceError, resolve_source

__all__ = ["Classification", "ModelAdapter", "Output", "SourceError", "load_adapter"]

log = logging.getLogger(__name__)


def load_adapter(
    manifest: ModelManifest,
    manifest_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    hub_timeout_s: float = 3.0,
    cpu_linear: CpuLinear = "auto",
) -> ModelAdapter:
    """Load one replica of `manifest` on `device` (compiled where it says `compile: true`; an
    eager float32 replica on a CPU with its Linear layers as `cpu_linear` says, see
    runtime/cpu_linear.py); raises with a readable reason on failure."""
    log.info("model %s on %s: %s", manifest.name, device, dtype_reason(manifest.dtype, dtype, device))
    source = resolve_source(manifest.source, manifest_dir, hub_timeout_s=hub_timeout_s)
    adapter: ModelAdapter
    if manifest.adapter == "torch":
        from service.serving.runtime.torch_adapter import load_torch_adapter

        adapter = load_torch_adapter(manifest, source, device, dtype)
    else:
        from service.serving.runtime.transformers_adapter import load_transformers_adapter

        base = None
        if manifest.base_source is not None:
            base = resolve_source(manifest.base_source, manifest_dir, hub_timeout_s=hub_timeout_s)
        adapter = load_transformers_adapter(manifest, source, device, dtype, base=base)
    if manifest.compile:
        adapter.compile(manifest.batching.max_batch_size, name=manifest.name)
    compiled = adapter.compile_state is not None and adapter.compile_state.active
    if device.type == "cpu" and dtype is torch.float32 and not compiled:
        wanted, reason = onednn_wanted(cpu_linear)
        layers = pack_checked(adapter, adapter.warmup, name=manifest.name) if wanted else 0
        if wanted and not layers:
            reason = "torch's default: no layer could be packed for oneDNN"
        adapter.linear_kernels = LinearKernels("onednn" if layers else "default", layers, reason)
        log.info("model %s: float32 Linear layers: %s (%d packed)", manifest.name, reason, layers)
    return adapter
