"""The gateway's settings: one typed object, built from flags, then `MAAS_*` variables, then defaults.

Nothing here is read at import time: `Settings()` reads the environment when it is built
(by the CLI or by a test), and the object is passed to `create_app`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_WORKERS = 256
CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP) -> str | None:
    """This process's CPU quota as cgroup v2's cpu.max says it ("<quota> <period>", or "max
    <period>"): read from cgroup v2, else from cgroup v1's cpu controller (cpu.cfs_quota_us, -1 for
    none, and cpu.cfs_period_us; older nodes and runtimes); None where neither is mounted."""
    try:
        return (root / "cpu.max").read_text(encoding="ascii")
    except OSError:
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            quota = (root / controller / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (root / controller / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        except OSError:
            continue
        return f"{'max' if quota.startswith('-') else quota} {period}"
    return None


def usable_cores(affinity: int, cpu_max: str | None) -> int:
    """The cores a process may keep busy: `affinity` (the CPUs it may run on), lowered by the
    cgroup v2 quota in `cpu_max` (the text of cpu.max; None or "max ...": no quota), rounded up:
    a Kubernetes CPU limit of 1.5 allows 2 busy workers' worth of bursts, never 64 on a big node."""
    cores = max(1, affinity)
    fields = (cpu_max or "").split()
    if len(fields) == 2 and fields[0] != "max":
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return cores
        if quota > 0 and period > 0:
            cores = min(cores, math.ceil(quota / period))
    return cores


class Settings(BaseSettings):
    """Every setting of the gateway. docs/settings.md documents each one."""

    model_config = SettingsConfigDict(env_prefix="MAAS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("var")
    database_url: str | None = None
    models_dir: Path = Path("models")
    devices: str = "auto"
    admin_key: SecretStr | None = None
    print_admin_key: bool = False  # print the kept admin key at start (it always says where it is)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "text"  # json: one object per line, for log shippers
    metrics_tenant_labels: bool = False  # /metrics needs no key: tenant ids and fine-tuned names only if on

    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)  # also bounds what preprocessing makes of one
    max_image_aspect_ratio: float = Field(32.0, ge=1, le=1_000_000)  # long side / short side
    max_inputs_per_request: int = Field(64, gt=0)
    max_text_chars: int = Field(10_000, gt=0)
    hub_probe_timeout_s: float = Field(3.0, gt=0)
    request_timeout_ms: int = Field(30_000, gt=0)  # default deadline; X-Request-Timeout-Ms overrides
    max_request_timeout_ms: int = Field(600_000, gt=0)
    # >1: that many front-end worker processes + a model process; auto: one per usable core
    workers: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    worker_shared_memory_mb: float = Field(32.0, ge=0, le=65536)  # each worker's arena for pixels; 0: none
    process_template: bool = True  # model process and workers forked from one that imported the app
    torch_threads: int = Field(0, ge=0)  # intra-op threads for forward passes; 0 = torch's default
    # float32 Linear layers on a CPU: oneDNN with packed weights, or torch's default (MKL on x86)
    cpu_linear: Literal["auto", "onednn", "default"] = "auto"
    host_memory_reuse: bool = True  # the model process keeps freed blocks (glibc malloc) for the next pass
    gc_freeze: bool = True  # each `maas serve` process freezes its long-lived objects (service/heap.py)
    preprocess_processes: int = Field(0, ge=0, le=64)  # image decode/preprocess processes; 0: threads
    preprocess_concurrency: int = Field(0, ge=0, le=1024)  # requests decoding at once, per process; 0: cores
    inline_decode_pixels: int = Field(250_000, ge=0)  # a worker decodes this much on its event loop; 0: none
    header_timeout_s: float = Field(10.0, gt=0, le=3600)  # slow clients cannot hold a connection
    fair_queueing: bool = True  # tenants share a busy model's batches by weight; false: FIFO
    drain_timeout_s: float = Field(30.0, ge=0)  # graceful shutdown: how long to finish queued work
    model_sync_s: float = Field(5.0, gt=0, le=3600)  # how often replicas re-read registered models
    # each device's budget for resident models, in MB (2**20 bytes; fractions allowed); None: the
    # device's memory less 10 % on CUDA, half the RAM on the CPU (per process)
    device_memory_mb: float | None = Field(None, gt=0, le=1e9)

    redis_url: SecretStr | None = None  # may carry a password
    redis_fail_open: bool = True
    default_rate_limit_rps: float | None = Field(None, gt=0)
    rate_limit_burst_factor: float = Field(2.0, ge=1)

    metering: bool = True  # false only for benchmarks: no usage events, no idempotency
    usage_flush_ms: float = Field(0.0, ge=0, le=1000)  # extra group-commit window; 0: none
    usage_max_group: int = Field(256, ge=1, le=100_000)  # most events in one transaction
    idempotency_ttl_h: float = Field(24.0, gt=0)
    # fine-tuning: dataset uploads and the job runner
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0)  # one dataset zip, as uploaded
    max_dataset_files: int = Field(20_000, gt=0)  # entries in one zip
    max_dataset_uncompressed_bytes: int = Field(1024 * 1024 * 1024, gt=0)  # zip bombs stop here
    max_dataset_image_bytes: int = Field(64 * 1024 * 1024, gt=0)  # one entry, uncompressed
    min_images_per_label: int = Field(5, ge=1)
    fine_tune_threads: int = Field(1, ge=1, le=256)  # torch CPU threads (cores held) of a training step
    fine_tune_runner: bool = True  # run jobs in this process (off: an API-only replica)
    fine_tune_max_yield_s: float = Field(10.0, ge=0)  # a step at least this often under load; 0: none
    fine_tune_lease_s: float = Field(60.0, gt=0)  # a job whose replica stops heartbeating is taken over

    # asynchronous batch jobs (/v1/batches)
    batch_runner: bool = True  # run batch jobs in this process (off: an API-only replica)
    batch_in_flight: int = Field(2, ge=1, le=4096)  # a job's inputs queued at once; progress saved as often
    batch_max_wait_s: float = Field(
        10.0, gt=0, le=3600
    )  # CPU: batch inputs yield to interactive at most this
    batch_preprocess_lanes: int = Field(1, ge=1, le=256)  # a job's inputs decoded at once
    batch_lease_s: float = Field(60.0, gt=0)  # a job whose replica stops heartbeating is taken over

    @field_validator("workers")
    @classmethod
    def _workers_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_WORKERS:
            raise ValueError(f"MAAS_WORKERS is 1-{MAX_WORKERS} or auto")
        return value

    @property
    def resolved_workers(self) -> int:
        """The number of front-end workers: the setting, or for `auto` the cores this process may
        use (its CPU affinity, lowered by a cgroup CPU quota where one is set)."""
        if isinstance(self.workers, int):
            return self.workers
        return min(usable_cores(len(os.sched_getaffinity(0)), cpu_quota()), MAX_WORKERS)

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL in use: the setting, else an SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'maas.db').resolve()}"
