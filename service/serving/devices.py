"""The device pool: which devices the gateway may use, and what precision each model gets on them.

Inference replicas are placed here; the fine-tuning runner will lease devices from the same pool.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch

T = TypeVar("T")

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


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as torch's kernels use it."""
    return bool(cpu_bfloat16_features())


def cpu_bfloat16_features() -> list[str]:
    """This CPU's native bfloat16 instruction sets that torch's kernels use (AVX512-BF16, AMX)."""
    found = [
        ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()),
        ("AMX", torch.cpu._is_amx_tile_supported()),
    ]
    return [name for name, present in found if present]


def resolve_dtype(
    requested: str, device: torch.device, *, native_bfloat16: Callable[[], bool] = cpu_has_native_bfloat16
) -> torch.dtype:
    """`auto` is float16 on CUDA; on a CPU, bfloat16 where it computes it natively (AVX512-BF16,
    AMX), else float32. Explicit dtypes are taken as asked."""
    if requested == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if native_bfloat16() else torch.float32
    try:
        return _DTYPES[requested]
    except KeyError:
        raise ValueError(f"unknown dtype {requested!r}") from None


def dtype_reason(requested: str, dtype: torch.dtype, device: torch.device) -> str:
    """Why a replica on `device` got `dtype` (logged at load, so that `auto`'s choice is visible)."""
    if requested != "auto":
        return f"dtype {requested} as the manifest asks"
    if device.type == "cuda":
        return "dtype auto: float16 on CUDA"
    if dtype is torch.bfloat16:
        return f"dtype auto: bfloat16, this CPU computes it natively ({', '.join(cpu_bfloat16_features())})"
    return "dtype auto: float32, this CPU has no native bfloat16 (AVX512-BF16 or AMX)"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a new model on `device` (CUDA: the driver's count; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def used_bytes(device: torch.device) -> int | None:
    """Memory in use on `device`: CUDA tensors allocated by this process; on CPU, its resident set."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_cached_memory(device: torch.device) -> None:
    """Hand back memory that warm-up passes left in caches (CUDA's allocator, glibc's arenas)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# A CPU replica's forward passes use all of torch's intra-op threads only when a pass on one
# thread takes at least this long (measured at load, see `intra_op_threads`).
PARALLEL_MIN_PASS_S = 0.01


def intra_op_threads(forward: Callable[[], object], most: int, *, repeats: int = 3) -> int:
    """How many intra-op threads a CPU replica's forward passes should use: `most` (torch's
    default) when `forward` (one representative pass) takes at least PARALLEL_MIN_PASS_S on one
    thread (the best of `repeats`), else 1. A shorter pass is made of operations too small to split:
    handing each to the threads costs about what it saves, while the threads take cores that
    decoding and HTTP need (docs/serving.md, "Intra-op threads on a CPU"). The pass's length
    rather than its speedup on more threads decides: on a busy machine the speedup reads low at
    random, the length only ever high. Measured on the calling thread, whose setting is restored."""
    if most <= 1:
        return 1
    with one_thread():
        one = min(_timed(forward) for _ in range(repeats))  # the best: a first pass's switch costs
    return most if one >= PARALLEL_MIN_PASS_S else 1


def cpu_lanes(threads: int, pipelined: bool) -> tuple[int, int]:
    """A CPU replica's batches at once and the intra-op threads of each, from the threads its
    passes are worth (`intra_op_threads`): a pipelined model (nothing shared between its batches)
    whose passes are worth several threads runs that many batches at once on one thread each
    instead. Passes side by side on separate cores lose nothing to handing each operation out
    and waiting at its end, nor stall when another process takes one of the cores for a moment
    (DeiT-tiny on 2 cores: 1.37x the throughput of one batch on 2 threads, docs/serving.md).
    A lane whose batch is the only one in hand still takes every thread (the registry's
    `Replica.run_batch`), so a lone request is no slower. Others: one batch on `threads`."""
    if pipelined and threads > 1:
        return threads, 1
    return 1, threads


def use_threads(threads: int) -> None:
    """Run the calling thread's torch operations on `threads` intra-op threads (0: leave them).
    Under OpenMP the setting is the calling thread's own: each replica's forward thread keeps its
    replica's."""
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The calling thread's torch operations on one intra-op thread within, as before after."""
    before = torch.get_num_threads()
    use_threads(1)
    try:
        yield
    finally:
        use_threads(before)


class Cores:
    """A process's CPU cores as permits, handed out first come, first served: a CPU pass on k
    intra-op threads holds k of them (at most all). Two lanes' passes run side by side, but a
    lane's lone batch on every thread waits for the other lane's pass to end, and holds the
    others back until it ends, rather than running 3 threads on 2 cores, where OpenMP's
    threads wait on a descheduled one at every parallel region's end."""

    def __init__(self, count: int) -> None:
        self.count = max(count, 1)
        self.free = self.count
        self.line: collections.deque[object] = collections.deque()
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, wanted: int) -> Iterator[None]:
        wanted = min(max(wanted, 1), self.count)
        turn = object()
        with self.changed:
            self.line.append(turn)
            self.changed.wait_for(lambda: self.line[0] is turn and self.free >= wanted)
            self.line.popleft()
            self.free -= wanted
            self.changed.notify_all()  # the next in line may fit beside it
        try:
            yield
        finally:
            with self.changed:
                self.free += wanted
                self.changed.notify_all()


CORES = Cores(torch.get_num_threads())

# The process's one thread for CPU passes on more than one intra-op thread. Under GNU OpenMP
# (torch's CPU builds) every thread that runs a parallel pass keeps a team of threads of its own,
# and once the teams hold more threads than there are cores, libgomp no longer spins between the
# parallel regions of a pass but sleeps and wakes at each: DeiT-tiny's pass at batch 1 on 2
# threads took 30.6 ms beside a second team against 13.7 ms alone (one thread: 20 ms). So such
# passes, of every replica, take turns on this thread, and every other thread runs torch on one
# (docs/serving.md, "Intra-op threads on a CPU").
_wide = ThreadPoolExecutor(1, thread_name_prefix="maas-wide")


_passes = threading.local()  # `began`: when the thread's latest CPU pass got its cores


def on_threads(threads: int, call: Callable[[], T]) -> T:
    """`call()`, a CPU pass, with torch on `threads` intra-op threads once it holds as many of
    the process's `CORES`: on the calling thread where that is one (0: as the thread has them),
    on the process's one wide thread where it is more (the calling thread waits)."""
    with CORES.held(threads):
        _passes.began = time.perf_counter()
        if threads <= 1:
            return _with_threads(threads, call)
        return _wide.submit(_with_threads, threads, call).result()


def computing_since(called: float) -> float:
    """When the calling thread's work begun at `called` (a `time.perf_counter()` reading) started
    computing: the moment its CPU pass got its cores (`on_threads`), `called` where it ran none
    (a GPU's batch). The wait for the cores is not the pass's device time."""
    return max(called, getattr(_passes, "began", called))


def _with_threads(threads: int, call: Callable[[], T]) -> T:
    use_threads(threads)
    return call()


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


class Worker(Protocol):
    """Anything that serves on a device and may have work waiting (a model replica's batcher)."""

    @property
    def load(self) -> int: ...


@dataclass
class DevicePool:
    """The devices this gateway serves on, and who works on each.

    Replicas go to the device with the most free memory that fits them (ties: the one holding
    fewer replicas). Training (later) asks `pending(device)` to yield to inference.
    """

    devices: list[torch.device]
    workers: dict[torch.device, list[Worker]] = field(default_factory=dict)
    free_memory: Callable[[torch.device], int | None] = free_bytes

    @classmethod
    def from_spec(cls, spec: str) -> DevicePool:
        return cls(parse_devices(spec))

    def place(
        self, replicas: int, need_bytes: int | None = None, *, room: Mapping[torch.device, int] | None = None
    ) -> list[torch.device]:
        """Pick a device for each of `replicas` copies of a model needing about `need_bytes` each,
        within each device's free memory, or within `room` where given (a memory budget's room)."""
        free = {d: (room.get(d, 0) if room is not None else self.free_memory(d)) for d in self.devices}
        placed = {d: len(self.workers.get(d, [])) for d in self.devices}
        chosen: list[torch.device] = []
        for replica in range(replicas):
            fitting = [
                d
                for d in self.devices
                if need_bytes is None or free[d] is None or (free[d] or 0) >= need_bytes
            ]
            if not fitting:
                mib = (need_bytes or 0) // 2**20
                raise ValueError(f"replica {replica + 1} of {replicas}: no device has {mib} MiB free")
            device = max(fitting, key=lambda d: ((free[d] or 0), -placed[d]))
            chosen.append(device)
            placed[device] += 1
            if need_bytes is not None and free[device] is not None:
                free[device] = (free[device] or 0) - need_bytes
        return chosen

    @staticmethod
    def pipeline_depth(device: torch.device) -> int:
        """Batches a replica on `device` has in flight: 2 on a GPU (the next batch's copy and the
        last one's outputs overlap a forward pass); 1 on a CPU, whose passes share its cores."""
        return 2 if device.type == "cuda" else 1

    def attach(self, device: torch.device, worker: Worker) -> None:
        self.workers.setdefault(device, []).append(worker)

    def detach(self, device: torch.device, worker: Worker) -> None:
        if worker in self.workers.get(device, []):
            self.workers[device].remove(worker)

    def pending(self, device: torch.device) -> int:
        """Inputs queued or running on `device`: the fine-tuning runner yields while this is > 0."""
        return sum(w.load for w in self.workers.get(device, []))
