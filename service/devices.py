"""The device pool: which devices the gateway may use, and what precision each model gets on them.

Inference replicas are placed here; the fine-tuning runner will lease devices from the same pool.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_devices(spec: str) -> list[torch.device]:
    """`auto` = every CUDA device, else the CPU; otherwise a comma list like `cuda:0,cuda:1` or `cpu`."""
    spec = spec.strip().lower()
    if spec in ("", "auto"):
        if torch.cuda.is_available():
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        return [torch.device("cpu")]
    devices: list[torch.device] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            device = torch.device(part)
        except RuntimeError as exc:
            raise ValueError(f"MAAS_DEVICES: {part!r} is not a device ({exc})") from exc
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"MAAS_DEVICES: {part!r} asked for, but CUDA is not available")
            index = device.index or 0
            if index >= torch.cuda.device_count():
                raise ValueError(f"MAAS_DEVICES: {part!r} does not exist")
            device = torch.device("cuda", index)
        elif device.type != "cpu":
            raise ValueError(f"MAAS_DEVICES: {part!r}: only cpu and cuda devices are supported")
        if device not in devices:
            devices.append(device)
    if not devices:
        raise ValueError("MAAS_DEVICES names no device")
    return devices


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA and float32 on CPU; explicit dtypes are taken as asked."""
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[requested]
    except KeyError:
        raise ValueError(f"unknown dtype {requested!r}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class DevicePool:
    """The devices this gateway serves on. Placement is round-robin for now."""

    devices: list[torch.device]
    _next: itertools.cycle[torch.device] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.devices)

    @classmethod
    def from_spec(cls, spec: str) -> DevicePool:
        return cls(parse_devices(spec))

    def place(self, replicas: int) -> list[torch.device]:
        """Pick a device for each of `replicas` copies of a model."""
        return [next(self._next) for _ in range(replicas)]
