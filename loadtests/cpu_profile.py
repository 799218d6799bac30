"""Where the CPU time goes while a server is under load: each process's CPU use (100 = one core
busy) and its busiest threads, and the GPU's utilisation, over one measured window.

    with CpuProfile(server.process.pid) as profile:
        ... drive the server ...
    profile.report()  # {"processes": [...], "gpu_util_percent": ...}

The server's process tree (the process and all its descendants, e.g. the gateway's supervisor,
model process and workers) and this process (the load generator) are read from psutil at the
start and the end of the window; a thread at about 100 is one core's worth of work on one
interpreter lock. GPU utilisation (the share of time a kernel ran, from NVML) is sampled every
0.2 s where nvidia-ml-py is installed.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil


def _times(process: psutil.Process) -> tuple[float, dict[int, float]]:
    """The process's CPU seconds and each thread's."""
    cpu = process.cpu_times()
    return cpu.user + cpu.system, {t.id: t.user_time + t.system_time for t in process.threads()}


class CpuProfile:
    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.start: dict[int, tuple[float, dict[int, float]]] = {}
        self.end: dict[int, tuple[float, dict[int, float]]] = {}
        self.names: dict[int, str] = {}
        self.rss_mb: dict[int, float] = {}
        self.seconds = 0.0
        self.gpu_samples: list[float] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _processes(self) -> list[psutil.Process]:
        return [psutil.Process(os.getpid()), self.root, *self.root.children(recursive=True)]

    def _read(self) -> dict[int, tuple[float, dict[int, float]]]:
        read = {}
        for process in self._processes():
            try:
                read[process.pid] = _times(process)
                self.rss_mb[process.pid] = round(process.memory_info().rss / 2**20, 1)
            except psutil.Error:
                continue
        return read

    def __enter__(self) -> CpuProfile:
        self.names = {os.getpid(): "load generator", self.root.pid: "server (root)"}
        self.start = self._read()
        self._started = time.perf_counter()
        self._sampler = threading.Thread(target=self._sample_gpu, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._read()
        self.seconds = time.perf_counter() - self._started
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()

    def _sample_gpu(self) -> None:
        try:
            import pynvml
        except ImportError:
            return
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self._stop.wait(0.2):
            self.gpu_samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def report(self, top_threads: int = 3) -> dict[str, Any]:
        """Each process seen at both ends: CPU percent, RSS, its OS threads at the end (a model
        process's OpenMP helpers show there: one team per thread that ran a parallel CPU op) and
        its busiest threads' CPU percent."""
        rows = []
        for pid, (cpu_end, threads_end) in self.end.items():
            if pid not in self.start:
                continue
            cpu_start, threads_start = self.start[pid]
            busy = sorted(
                (100 * (t - threads_start.get(tid, 0.0)) / self.seconds for tid, t in threads_end.items()),
                reverse=True,
            )
            rows.append(
                {
                    "pid": pid,
                    "role": self.names.get(pid, "child"),
                    "cpu_percent": round(100 * (cpu_end - cpu_start) / self.seconds, 1),
                    "rss_mb": self.rss_mb.get(pid),
                    "threads": len(threads_end),
                    "busiest_threads_percent": [round(b, 1) for b in busy[:top_threads]],
                }
            )
        rows.sort(key=lambda row: -row["cpu_percent"])
        gpu = round(sum(self.gpu_samples) / len(self.gpu_samples), 1) if self.gpu_samples else None
        return {"seconds": round(self.seconds, 1), "processes": rows, "gpu_util_percent": gpu}
