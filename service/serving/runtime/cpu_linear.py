"""float32 Linear layers on a CPU through oneDNN with weights packed once (`MAAS_CPU_LINEAR`).

torch runs a float32 `nn.Linear` on an x86 CPU through MKL's sgemm, which lays the weight out
for its kernels again on every call (and takes its AVX-512 kernels only on Intel CPUs). oneDNN
with the weight reordered once, at load, into its blocked layout does not: on CPUs with AVX-512
a ViT's forward pass runs a few per cent faster (docs/serving.md). torch.compile's CPU backend
does the same to a frozen graph's Linear layers (`mkldnn._reorder_linear_weight`,
`mkldnn._linear_pointwise`); here it is done to an eager model, in place, so that the weights
are still held once.

Only the layers under the model's `base_model` (the encoder of a classifier) are packed: a
classifier's head stays a plain Linear, which the LoRA banks read. A packed layer is still an
`nn.Linear` (a LoRA bank wraps it and calls it). A model that reads a packed weight other than
through its layer's forward fails its check pass: its layers are put back as they were. A packed
model cannot be deep-copied (torch does not clone a packed tensor): copy a model before packing.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

CpuLinear = Literal["auto", "onednn", "default"]


@dataclass(frozen=True)
class LinearKernels:
    """What a float32 replica on a CPU runs its Linear layers on (the model's detail shows it)."""

    kernels: Literal["onednn", "default"]
    packed_layers: int
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "packed_layers": self.packed_layers, "reason": self.reason}


def onednn_wanted(choice: CpuLinear, *, capability: str | None = None) -> tuple[bool, str]:
    """Whether float32 Linear layers on this CPU go through oneDNN, and why. `auto`: on a CPU with
    AVX-512 (measured faster there on an Intel Xeon and an AMD EPYC; not measured on others)."""
    if choice == "default":
        return False, "torch's default (MAAS_CPU_LINEAR=default)"
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False, "torch's default: this torch is built without oneDNN"
    if choice == "onednn":
        return True, "oneDNN, packed (MAAS_CPU_LINEAR=onednn)"
    capability = capability if capability is not None else torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return True, f"oneDNN, packed: this CPU has {capability}"
    return False, f"torch's default: this CPU has {capability}, where oneDNN was not measured faster"


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
