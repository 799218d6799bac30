"""The device pool: reading `MAAS_DEVICES`, the dtype a model gets, replica placement, and the
intra-op threads a CPU replica's forward passes run on."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.serving.devices import (
    DevicePool,
    cpu_bfloat16_features,
    cpu_lanes,
    dtype_name,
    dtype_reason,
    intra_op_threads,
    parse_devices,
    resolve_dtype,
    use_threads,
)

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.mark.parametrize("spec", ["cpu", " CPU ", "cpu,cpu", "cpu,"])
def test_cpu(spec: str) -> None:
    assert parse_devices(spec) == [CPU]


@no_cuda
@pytest.mark.parametrize("spec", ["auto", "", "AUTO"])
def test_auto_without_cuda_is_the_cpu(spec: str) -> None:
    assert parse_devices(spec) == [CPU]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_with_cuda_is_every_gpu() -> None:
    count = torch.cuda.device_count()
    assert parse_devices("auto") == [torch.device("cuda", i) for i in range(count)]
    assert parse_devices("cuda") == [torch.device("cuda", 0)]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("tpu:0", "'tpu:0' is not a device"),
        ("gpu", "'gpu' is not a device"),
        ("cpu,bogus", "'bogus' is not a device"),
        ("meta", "'meta': only cpu and cuda devices are supported"),
        ("mps", "'mps': only cpu and cuda devices are supported"),
        (",", "names no device"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match="MAAS_DEVICES") as caught:
        parse_devices(spec)
    assert says in str(caught.value)


@no_cuda
@pytest.mark.parametrize("spec", ["cuda:0", "cuda", "cpu,cuda:1"])
def test_cuda_without_cuda_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        parse_devices(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_past_the_last_gpu_is_refused() -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=f"'{missing}' does not exist"):
        parse_devices(missing)


def test_auto_dtype_is_float32_on_cpu_and_float16_on_cuda() -> None:
    assert resolve_dtype("auto", CPU, native_bfloat16=lambda: False) is torch.float32
    assert resolve_dtype("auto", CPU, native_bfloat16=lambda: True) is torch.bfloat16  # AVX512-BF16, AMX
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.float16


def test_the_dtype_auto_picked_is_logged_with_its_reason() -> None:
    picked = resolve_dtype("auto", CPU)
    reason = dtype_reason("auto", picked, CPU)
    if cpu_bfloat16_features():
        assert picked is torch.bfloat16
        assert reason.startswith("dtype auto: bfloat16, this CPU computes it natively (")
        assert all(feature in reason for feature in cpu_bfloat16_features())
    else:
        assert (picked, reason) == (
            torch.float32,
            "dtype auto: float32, this CPU has no native bfloat16 (AVX512-BF16 or AMX)",
        )
    cuda = torch.device("cuda", 0)
    assert dtype_reason("auto", resolve_dtype("auto", cuda), cuda) == "dtype auto: float16 on CUDA"
    assert dtype_reason("bfloat16", torch.bfloat16, cuda) == "dtype bfloat16 as the manifest asks"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)],
)
def test_explicit_dtypes_are_taken_as_asked(name: str, dtype: torch.dtype) -> None:
    assert resolve_dtype(name, CPU) is dtype
    assert resolve_dtype(name, torch.device("cuda", 0)) is dtype
    assert dtype_name(dtype) == name


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", CPU)


GIB = 2**30


class Busy:
    """A worker with `load` inputs waiting (stands in for a replica's batcher)."""

    def __init__(self, load: int) -> None:
        self.load = load


def test_replicas_go_where_memory_is_free_and_spread_on_ties() -> None:
    # Devices are only named here, never used, so this needs no GPU; free memory is injected.
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    free = {gpus[0]: 10 * GIB, gpus[1]: 10 * GIB}
    pool = DevicePool(gpus, free_memory=free.__getitem__)
    assert pool.place(3, need_bytes=2 * GIB) == [gpus[0], gpus[1], gpus[0]]
    free[gpus[0]] = 3 * GIB
    assert pool.place(2, need_bytes=2 * GIB) == [gpus[1], gpus[1]]  # most free memory first
    assert pool.place(0) == []


def test_a_model_that_fits_nowhere_is_refused_with_the_size() -> None:
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    pool = DevicePool(gpus, free_memory=lambda _d: 1 * GIB)
    with pytest.raises(ValueError, match="replica 1 of 1: no device has 2048 MiB free"):
        pool.place(1, need_bytes=2 * GIB)
    # two replicas of 600 MiB fit one per device, a third does not
    with pytest.raises(ValueError, match="replica 3 of 3"):
        pool.place(3, need_bytes=600 * 2**20)


def test_pending_counts_the_work_waiting_on_each_device() -> None:
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    pool = DevicePool(gpus, free_memory=lambda _d: None)
    busy, idle = Busy(3), Busy(0)
    pool.attach(gpus[0], busy)
    pool.attach(gpus[0], idle)
    assert pool.pending(gpus[0]) == 3 and pool.pending(gpus[1]) == 0
    pool.detach(gpus[0], busy)
    assert pool.pending(gpus[0]) == 0
    # a device holding replicas is picked after an empty one with the same free memory
    assert pool.place(1) == [gpus[1]]


def test_pool_from_spec() -> None:
    pool = DevicePool.from_spec("cpu")
    assert pool.devices == [CPU] and pool.place(2) == [CPU, CPU]


def test_gpu_replicas_of_pixel_models_keep_two_batches_in_flight_and_cpu_ones_one() -> None:
    from service.serving.runtime.torch_adapter import TorchImageClassifierAdapter
    from service.serving.runtime.transformers_adapter import (
        FeatureExtractionAdapter,
        ImageClassificationAdapter,
    )
    from service.serving.runtime.zero_shot import ZeroShotImageClassificationAdapter

    assert DevicePool.pipeline_depth(torch.device("cuda", 0)) == 2
    assert DevicePool.pipeline_depth(CPU) == 1  # two passes would only share the same cores
    assert ImageClassificationAdapter.pipelined and TorchImageClassifierAdapter.pipelined
    # a tokenizer (or a cache) serves one batch at a time
    assert not FeatureExtractionAdapter.pipelined and not ZeroShotImageClassificationAdapter.pipelined


def test_a_pixel_model_worth_several_threads_runs_as_many_batches_side_by_side_on_one_each() -> None:
    assert cpu_lanes(4, pipelined=True) == (4, 1)  # four batches at once, one thread each
    assert cpu_lanes(4, pipelined=False) == (1, 4)  # a tokenizer serves one batch at a time
    assert cpu_lanes(1, pipelined=True) == (1, 1)  # a short pass: one batch on one thread
    assert cpu_lanes(0, pipelined=True) == (1, 0)  # MAAS_TORCH_THREADS set: as the process has them


def _on_thread(call: Callable[[], int]) -> int:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def _pass(one_thread_s: float) -> Callable[[], None]:
    """A forward pass that takes `one_thread_s` on one thread and that divided by the threads it
    runs on (it reads the calling thread's setting, as torch's kernels do)."""
    return lambda: time.sleep(one_thread_s / torch.get_num_threads())


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_a_long_forward_pass_gets_every_thread_and_a_short_one_gets_one() -> None:
    most = torch.get_num_threads()

    assert intra_op_threads(_pass(0.03), most) == most
    assert intra_op_threads(_pass(0.002), most) == 1  # too short to be worth splitting
    assert torch.get_num_threads() == most  # the caller's setting is back
    assert intra_op_threads(_pass(0.03), 1) == 1


def test_many_small_operations_keep_one_thread() -> None:
    small = torch.randn(8)
    assert intra_op_threads(lambda: [small + 1 for _ in range(50)], max(2, torch.get_num_threads())) == 1


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_a_forward_threads_setting_is_its_own() -> None:
    most = torch.get_num_threads()

    def one_thread() -> int:
        use_threads(1)
        return torch.get_num_threads()

    assert _on_thread(one_thread) == 1  # a replica's forward thread runs on one
    assert torch.get_num_threads() == most  # the other threads keep theirs
    use_threads(0)  # 0 leaves the setting alone
    assert torch.get_num_threads() == most
