"""float32 Linear layers on a CPU through oneDNN with weights packed once (`MAAS_CPU_LINEAR`).

torch runs a float32 `nn.Linear` on an x86 CPU through MKL's sgemm, which takes its AVX-512
kernels only on Intel CPUs: on an AMD CPU with AVX-512 (EPYC Zen 4 and later) oneDNN's are
faster, and faster still with the weight reordered once into oneDNN's blocked layout instead of
on every call. That is what torch.compile's CPU backend does to a frozen graph's Linear layers
(`mkldnn._reorder_linear_weight`, `mkldnn._linear_pointwise`); here it is done to an eager
model, in place, so that the weights are still held once.

Only the layers under the model's `base_model` (the encoder of a classifier) are packed: a
classifier's head stays a plain Linear, which the LoRA banks read. A packed layer is still an
`nn.Linear` (a LoRA bank wraps it and calls it). A model that reads a packed weight other than
through its layer's forward fails its check pass: its layers are put back as they were.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

CpuLinear = Literal["auto", "onednn", "default"]
CPUINFO = Path("/proc/cpuinfo")


def cpu_vendor(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's vendor as the kernel reports it (`GenuineIntel`, `AuthenticAMD`...); "" if unknown."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def onednn_wanted(
    choice: CpuLinear, *, vendor: str | None = None, capability: str | None = None
) -> tuple[bool, str]:
    """Whether float32 Linear layers on this CPU go through oneDNN, and why. `auto`: on a CPU
    with AVX-512 that is not Intel's (where MKL does use AVX-512, and measures as fast)."""
    if choice == "default":
        return False, "torch's default (MAAS_CPU_LINEAR=default)"
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False, "torch's default: this torch is built without oneDNN"
    if choice == "onednn":
        return True, "oneDNN, packed (MAAS_CPU_LINEAR=onednn)"
    vendor = vendor if vendor is not None else cpu_vendor()
    capability = capability if capability is not None else torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512") and vendor not in ("", "GenuineIntel"):
        return True, f"oneDNN, packed: {vendor} with {capability}, where MKL leaves AVX-512 unused"
    return False, f"torch's default ({vendor or 'unknown vendor'}, {capability})"


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
    return out


@dataclass
class Packing:
    """The Linear layers packed in one model, with their plain weights until `keep` or `undo`."""

    layers: list[nn.Linear] = field(default_factory=list)
    plain: list[torch.Tensor] = field(default_factory=list)

    def keep(self) -> None:
        """The packed layers passed their check: the plain weights are dropped."""
        self.plain.clear()

    def undo(self) -> None:
        """Every layer back to its plain weight and torch's own forward."""
        for layer, weight in zip(self.layers, self.plain, strict=True):
            layer.weight = weight
            del layer.forward  # the class's forward again
        self.layers.clear()
        self.plain.clear()


def pack_linears(module: nn.Module) -> Packing:
    """Reorder each float32 `nn.Linear` weight under `module` for oneDNN and run the layer on it."""
    packing = Packing()
    for layer in module.modules():
        if type(layer) is not nn.Linear or layer.weight.dtype != torch.float32 or layer.weight.is_mkldnn:
            continue
        plain = layer.weight
        packed = torch.ops.mkldnn._reorder_linear_weight(plain.detach(), None)
        layer.weight = nn.Parameter(packed, requires_grad=False)
        layer.forward = types.MethodType(_packed_forward, layer)  # type: ignore[method-assign]
        packing.layers.append(layer)
        packing.plain.append(plain)
    return packing


def model_of(adapter: Any) -> nn.Module | None:
    """The torch module an adapter runs (a pipeline's model, or its own), if it has one."""
    module = getattr(adapter, "model", None) or getattr(getattr(adapter, "pipe", None), "model", None)
    return module if isinstance(module, nn.Module) else None


def pack_checked(adapter: Any, check: Callable[[], object], *, name: str) -> int:
    """Pack the Linear layers of `adapter`'s base model, then run `check` (a warm-up pass); a
    model the packed layers break is put back as it was. Returns how many layers stay packed."""
    module = model_of(adapter)
    if module is None:
        return 0
    packing = pack_linears(getattr(module, "base_model", module))
    if not packing.layers:
        return 0
    try:
        check()
    except Exception as exc:  # a model that reads a weight itself: it runs as torch would
        packing.undo()
        log.warning("model %s: Linear layers left to torch's default, packed ones failed: %s", name, exc)
        return 0
    packing.keep()
    return len(packing.layers)
