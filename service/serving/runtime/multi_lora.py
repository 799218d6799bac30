"""Many LoRA adapters over one copy of a classifier's weights, mixed in one batch.

A PEFT LoRA adapter adds `scale * B(A(x))` to some Linear layers' outputs and (a classification
fine-tune) brings its own classifier head. Merging it (W + scale * B @ A) costs a full copy of the
model per adapter. Here the base model's adapted layers are wrapped once, in place: every resident
adapter's A and B (scale folded into B) sit in one bank per layer, padded to the largest rank,
and each row of a batch is routed to its adapter's slot: per layer one gather and two batched
matmuls, whatever the mix. Slot 0 holds zeros and the base's own head: rows with no adapter run
the base model exactly. A Linear head is banked the same way; another head runs once per adapter
on that adapter's rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

PREFIX = "base_model.model."  # PEFT's prefix of every saved tensor name
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


class UnsupportedAdapter(ValueError):
    """An adapter folder these banks cannot serve (another PEFT method, DoRA, per-layer ranks...):
    the caller merges it into a copy of its base instead."""


@dataclass(frozen=True)
class LoraInput:
    """One input's features, for the LoRA adapter named `adapter` of the model that runs it."""

    adapter: str
    features: Any


@dataclass
class LoraWeights:
    """One PEFT LoRA adapter as read from its folder (on the CPU, float32)."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer path -> (A (r, in), scale * B (out, r))
    head_path: str | None  # the classifier head PEFT saved in full (`modules_to_save`), if any
    head: dict[str, torch.Tensor]  # its tensors, by name within the head
    labels: list[str]

    @property
    def nbytes(self) -> int:
        tensors = [*(t for pair in self.pairs.values() for t in pair), *self.head.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def read_lora(folder: Path) -> LoraWeights:
    """The adapter saved in `folder` (adapter_config.json, adapter_model.safetensors, labels.json);
    raises UnsupportedAdapter for what the banks do not model."""
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    refused = {
        "peft_type": config.get("peft_type") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "bias": config.get("bias", "none") != "none" or bool(config.get("lora_bias")),
        "rank_pattern": bool(config.get("rank_pattern")) or bool(config.get("alpha_pattern")),
        "layer_replication": bool(config.get("layer_replication")),
    }
    if any(refused.values()):
        raise UnsupportedAdapter(f"{folder.name}: {', '.join(k for k, v in refused.items() if v)}")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    state = {
        k.removeprefix(PREFIX): v.float() for k, v in load_file(folder / "adapter_model.safetensors").items()
    }
    pairs = {
        name.removesuffix(LORA_A): (a, state[name.removesuffix(LORA_A) + LORA_B] * scale)
        for name, a in state.items()
        if name.endswith(LORA_A)
    }
    heads = list(config.get("modules_to_save") or [])
    if len(heads) > 1:
        raise UnsupportedAdapter(f"{folder.name}: more than one module saved in full ({heads})")
    head_path = _saved_module(state, heads[0]) if heads else None
    head = {}
    if head_path is not None:
        head = {k.removeprefix(head_path + "."): v for k, v in state.items() if k.startswith(head_path + ".")}
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    return LoraWeights(pairs, head_path, head, [str(label) for label in labels])


def _saved_module(state: dict[str, torch.Tensor], name: str) -> str | None:
    """The path of the module called `name` whose tensors PEFT saved (e.g. `classifier`)."""
    for key in state:
        parts = key.split(".")
        if name in parts[:-1] and LORA_A not in key and LORA_B not in key:
            return ".".join(parts[: parts.index(name) + 1])
    return None


class Routing(threading.local):
    """Which slot each row of the batch now running on this thread uses (None: no adapters)."""

    slots: torch.Tensor | None = None


class LoraBankLinear(nn.Module):
    """A Linear layer of the base, plus the resident adapters' low-rank updates for it: per slot,
    A and B transposed (x @ a @ b), padded to the largest rank; slot 0 (zeros) is the base's."""

    def __init__(self, base: nn.Linear, routing: Routing, capacity: int) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        weight = base.weight
        self.a = torch.zeros(capacity, base.in_features, 1, device=weight.device, dtype=weight.dtype)
        self.b = torch.zeros(capacity, 1, base.out_features, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        slots = self.routing.slots
        if slots is None:
            return out
        low = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), self.a[slots])  # (N, tokens, r)
        rows = out.reshape(out.shape[0], -1, out.shape[-1])
        return torch.baddbmm(rows, low, self.b[slots]).reshape(out.shape)

    def reserve(self, capacity: int, rank: int = 1) -> None:
        """Room for `capacity` slots of rank `rank` (the bank only grows)."""
        capacity, rank = max(capacity, self.a.shape[0]), max(rank, self.a.shape[2])
        if (capacity, rank) != (self.a.shape[0], self.a.shape[2]):
            self.a = _grown(self.a, (capacity, self.base.in_features, rank))
            self.b = _grown(self.b, (capacity, rank, self.base.out_features))

    def put(self, slot: int, pair: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Slot `slot` holds this (A, B), or nothing (an adapter that leaves this layer be)."""
        self.a[slot].zero_()
        self.b[slot].zero_()
        if pair is not None:
            rank = pair[0].shape[0]
            self.reserve(0, rank)
            self.a[slot, :, :rank] = pair[0].T
            self.b[slot, :rank] = pair[1].T

    def move(self, source: int, slot: int) -> None:
        self.a[slot] = self.a[source]
        self.b[slot] = self.b[source]


class HeadBank(nn.Module):
    """The base's classifier head (slot 0) and each resident adapter's own, applied row by row: a
    Linear head from a bank like the layers' (padded to the widest label set), another head once
    per adapter on its rows."""

    def __init__(self, base: nn.Module, routing: Routing, capacity: int) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.heads: dict[int, dict[str, torch.Tensor]] = {}  # by slot; none: the base's head
        self.weight: torch.Tensor | None = None  # Linear heads: (slots, in, labels)
        self.bias: torch.Tensor | None = None  # (slots, labels)
        if isinstance(base, nn.Linear):
            self.weight = base.weight.new_zeros(capacity, base.in_features, base.out_features)
            self.bias = base.weight.new_zeros(capacity, base.out_features)
            self.put(0, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self.routing.slots
        if slots is None:
            out: torch.Tensor = self.base(x)
            return out
        if self.weight is not None and self.bias is not None:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            logits = torch.baddbmm(self.bias[slots].unsqueeze(1), rows, self.weight[slots])
            return logits.reshape(*x.shape[:-1], -1)
        return self._per_adapter(x, slots)

    def _per_adapter(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        outputs: dict[int, torch.Tensor] = {}
        for slot in sorted(set(slots.tolist())):
            rows, state = x[slots == slot], self.heads.get(slot)
            call = torch.func.functional_call
            outputs[slot] = self.base(rows) if state is None else call(self.base, state, (rows,))
        width = max(o.shape[-1] for o in outputs.values())
        first = next(iter(outputs.values()))
        logits = first.new_zeros((x.shape[0], *first.shape[1:-1], width))
        for slot, out in outputs.items():
            logits[slots == slot, ..., : out.shape[-1]] = out
        return logits

    def reserve(self, capacity: int) -> None:
        if self.weight is not None and self.bias is not None and capacity > self.weight.shape[0]:
            self.weight = _grown(self.weight, (capacity, *self.weight.shape[1:]))
            self.bias = _grown(self.bias, (capacity, self.bias.shape[1]))

    def put(self, slot: int, state: dict[str, torch.Tensor] | None) -> None:
        """Slot `slot` scores with this head's tensors (None: the base's head)."""
        self.heads.pop(slot, None)
        if state is not None and self.weight is None:
            self.heads[slot] = {k: v.to(next(self.base.parameters())) for k, v in state.items()}
        if self.weight is None or self.bias is None:
            return
        assert isinstance(self.base, nn.Linear)
        weight, bias = (
            (state or {}).get("weight", self.base.weight),
            (state or {}).get("bias", self.base.bias),
        )
        width = weight.shape[0]
        if width > self.weight.shape[2]:
            self.weight = _grown(self.weight, (*self.weight.shape[:2], width))
            self.bias = _grown(self.bias, (self.bias.shape[0], width))
        self.weight[slot].zero_()
        self.bias[slot].zero_()
        self.weight[slot, :, :width] = weight.T
        if bias is not None:
            self.bias[slot, :width] = bias

    def move(self, source: int, slot: int) -> None:
        if source in self.heads:
            self.heads[slot] = self.heads.pop(source)
        if self.weight is not None and self.bias is not None:
            self.weight[slot] = self.weight[source]
            self.bias[slot] = self.bias[source]


class MultiLoraModel:
    """A base classifier, wrapped in place to serve any number of LoRA adapters by slot. Only the
    banks hold an adapter's tensors (moved to the model's device and dtype); they grow by a
    quarter when full, and a removed adapter's slot takes the last one's.

    Its forward pass is unchanged outside `routed`; `add` and `remove` must not run during a
    forward pass (the caller runs them on the thread that runs the model)."""

    def __init__(self, model: nn.Module, head_path: str) -> None:
        self.model = model
        self.routing = Routing()
        self.head_path = head_path
        self.capacity = 1  # slots, the base's included
        self.head = HeadBank(model.get_submodule(head_path), self.routing, self.capacity)
        _replace(model, head_path, self.head)
        self.layers: dict[str, LoraBankLinear] = {}
        self.slots: dict[str, int] = {}  # resident adapter -> its slot (1...)

    def slot(self, name: str) -> int:
        """The slot of the resident adapter `name`; KeyError when it is not resident."""
        return self.slots[name] if name in self.slots else _missing(name)

    def add(self, name: str, weights: LoraWeights) -> None:
        """Make the adapter resident (again, if it was)."""
        if weights.head_path not in (None, self.head_path):
            raise UnsupportedAdapter(f"{name}: its head {weights.head_path!r} is not {self.head_path!r}")
        for path in weights.pairs:
            module = self.layers.get(path) or self.model.get_submodule(path)
            if not isinstance(module, (nn.Linear, LoraBankLinear)):
                raise UnsupportedAdapter(f"{name}: {path} is a {type(module).__name__}, not a Linear layer")
        self.remove(name)
        slot = len(self.slots) + 1
        if slot >= self.capacity:
            self.capacity = slot + max(4, slot // 4)
            self.head.reserve(self.capacity)
            for layer in self.layers.values():
                layer.reserve(self.capacity)
        for path in weights.pairs:
            if path not in self.layers:
                linear = self.model.get_submodule(path)
                assert isinstance(linear, nn.Linear)  # checked above
                self.layers[path] = LoraBankLinear(linear, self.routing, self.capacity)
                _replace(self.model, path, self.layers[path])
        for path, layer in self.layers.items():
            layer.put(slot, weights.pairs.get(path))
        self.head.put(slot, weights.head or None)
        self.slots[name] = slot

    def remove(self, name: str) -> None:
        slot = self.slots.pop(name, None)
        if slot is None:
            return
        last = len(self.slots) + 1
        if slot != last:  # the last adapter moves into the freed slot
            moved = next(n for n, s in self.slots.items() if s == last)
            for layer in self.layers.values():
                layer.move(last, slot)
            self.head.move(last, slot)
            self.slots[moved] = slot
        for layer in self.layers.values():
            layer.put(last, None)
        self.head.put(last, None)

    @contextlib.contextmanager
    def routed(self, slots: list[int], device: torch.device) -> Iterator[None]:
        """Forward passes on this thread run row i with the adapter in slot `slots[i]`."""
        self.routing.slots = torch.tensor(slots, device=device)
        try:
            yield
        finally:
            self.routing.slots = None

    @property
    def nbytes(self) -> int:
        """The memory the adapters' banks hold."""
        tensors = [t for layer in self.layers.values() for t in (layer.a, layer.b)]
        tensors += [t for t in (self.head.weight, self.head.bias) if t is not None]
        tensors += [t for state in self.head.heads.values() for t in state.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def _grown(bank: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A zero tensor of `shape` holding `bank` in its leading corner."""
    grown = bank.new_zeros(shape)
    grown[tuple(slice(0, n) for n in bank.shape)] = bank
    return grown


def _missing(name: str) -> int:
    raise KeyError(f"LoRA adapter {name!r} is not resident")


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
