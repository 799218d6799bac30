"""`maas serve` with `MAAS_WORKERS` > 1: a supervisor, one model process, N front-end workers.

    supervisor (this process: binds the port, starts and restarts the others, sequences the drain)
      ├─ model process: every model once per device, batchers, job runners
      └─ worker 0..N-1: HTTP, keys, limits, metering, reading and decoding inputs, on the shared port
         (rate-limit buckets and in-flight counts: tables in shared memory, made by the supervisor)

Each worker listens on the port with its own socket (SO_REUSEPORT), so that the kernel spreads
new connections evenly over the workers (on one shared socket, the worker that wakes first takes
most of a burst of connections, and keeps them: a benchmark's 16 keep-alive connections all
landed on one of two workers). The supervisor holds the port (bound, not listening). The model
process and the workers are forked from a template process that imported what they run once
(multiprocessing's fork server, service/engine/template.py), so they share its memory and start
without importing anything. A worker
reaches the model process over a Unix socket in a private temporary folder (wire.py). A process
that dies is started again: a worker's requests in flight are lost with it (their usage events
committed before each answer went out are not), a model process's queued calls answer 503 in the
workers, which reconnect once it is back. SIGTERM (or Ctrl-C) drains the workers first (they
finish their requests, which need the model process), then the model process (jobs stop
resumably, queued inputs are answered, usage committed), then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType
from typing import Any

from service import heap
from service.observability.logs import configure_logging
from service.settings import Settings
from service.tenancy.shared_limits import shared_limits

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def serve_workers(settings: Settings) -> None:
    """Run the model process and `settings.workers` workers until SIGTERM/SIGINT; exit 1 if the
    model process cannot start."""
    # mode 0700: this user's alone; on /dev/shm where there is one (the workers' arenas: memory)
    folder = Path(tempfile.mkdtemp(prefix="maas-engine-", dir=_memory_folder()))
    try:
        port = reserve(settings.host, settings.port)
        supervisor = _Supervisor(settings, port, folder / "engine.sock")
        code = supervisor.run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if code:
        raise SystemExit(code)


def _memory_folder() -> str | None:
    """/dev/shm where this user may write there, else None (the system's temporary folder)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


class _Supervisor:
    def __init__(self, settings: Settings, port: socket.socket, path: Path) -> None:
        self.settings = settings
        self.port = port  # held, so that the port stays this gateway's while workers come and go
        self.path = path
        self.context = _context(settings.process_template)
        self.engine: BaseProcess | None = None
        self.engine_ready: EventType = self.context.Event()
        self.workers: dict[int, BaseProcess] = {}
        self.stopping = False
        # made before the workers' arenas; the tenants' requests in flight per worker, for
        # `forget_worker` (service/tenancy/shared_limits.py)
        _, self.in_flight = shared_limits(
            path.parent, workers=settings.resolved_workers, buckets=settings.redis_url is None
        )

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self._start_engine()
        for index in range(self.settings.resolved_workers):
            self._start_worker(index)
        host, port = self.port.getsockname()[:2]
        log.info("maas gateway on http://%s:%d: a model process, %d workers", host, port, len(self.workers))
        while not self.stopping:
            processes = [p for p in (self.engine, *self.workers.values()) if p is not None]
            wait([p.sentinel for p in processes], timeout=1.0)
            if self.stopping:
                break
            if self.engine is not None and not self.engine.is_alive():
                code = self.engine.exitcode
                if not self.engine_ready.is_set():
                    log.error("the model process failed to start (exit %s); stopping", code)
                    self._drain()
                    return 1
                log.error("the model process stopped (exit %s); starting it again", code)
                self._start_engine()
            for index, worker in list(self.workers.items()):
                if not worker.is_alive():
                    log.error("worker %d stopped (exit %s); starting it again", index, worker.exitcode)
                    self._start_worker(index)
        self._drain()
        return 0

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start_engine(self) -> None:
        self.engine_ready = self.context.Event()  # set once it serves the workers
        engine = self.context.Process(
            target=run_engine, args=(self.settings, self.path, self.engine_ready), name="maas-model"
        )
        engine.start()
        self.engine = engine

    def _start_worker(self, index: int) -> None:
        if self.in_flight is not None:
            self.in_flight.forget_worker(index)  # a dead worker's requests hold no slot
        settings = self.settings.model_copy(
            update={
                "port": self.port.getsockname()[1],  # the one MAAS_PORT 0 was given
                "print_admin_key": False,
                "fine_tune_runner": False,
                "batch_runner": False,
            }
        )
        worker = self.context.Process(
            target=run_worker, args=(settings, index, self.path), name=f"maas-worker-{index}"
        )
        worker.start()
        self.workers[index] = worker

    def _drain(self) -> None:
        """Workers first (their requests need the model process), then the model process."""
        grace = self.settings.drain_timeout_s + 30
        for worker in self.workers.values():
            _signal(worker, signal.SIGTERM)
        for worker in self.workers.values():
            worker.join(grace)
            _signal(worker, signal.SIGKILL)
        if self.engine is not None:
            _signal(self.engine, signal.SIGTERM)
            self.engine.join(grace)
            _signal(self.engine, signal.SIGKILL)


def _signal(process: BaseProcess, sig: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _context(template: bool) -> ForkServerContext | SpawnContext:
    """Forks of the template (service/engine/template.py) where it is asked for and the platform
    has a fork server, else spawned interpreters. The template is started with the model process,
    by the supervisor, which itself never imports torch."""
    if not template or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.engine.template"])
    return context


def _die_with_parent() -> None:
    """On Linux, this process gets SIGTERM when its parent dies (even by SIGKILL): the supervisor,
    or the template, which exits when the supervisor does (`_leave_template`)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _leave_template() -> None:
    """Let go of the fork server's lifeline, which its children inherit so that it outlives them
    all: the template then exits when the supervisor does, and its children with it."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # private: multiprocessing offers no public way
    if server._forkserver_alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def _started(settings: Settings) -> bool:
    """A child's first steps (its logs; its death with its parent; the template's lifeline let go
    of), and whether it is a fork of the template (else it imports the app itself)."""
    forked = "service.engine.template" in sys.modules
    configure_logging(settings.log_level, settings.log_format)
    _die_with_parent()
    if forked:
        _leave_template()
    return forked


def _cuda_lost_in_fork() -> bool:
    """Whether this fork cannot use CUDA (its parent had initialised it: the template never should)."""
    import torch

    return bool(torch.cuda._is_in_bad_fork())


def run_engine(settings: Settings, path: Path, ready: EventType) -> None:
    """The model process: the whole gateway without HTTP, serving the workers' calls at `path`."""
    if _started(settings) and _cuda_lost_in_fork():
        log.error("CUDA was initialised in the template before the fork; set MAAS_PROCESS_TEMPLATE=false")
        _exit_now(1)
    if settings.gc_freeze:
        heap.manage()  # not `inherited`: a model unloaded must be found and freed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the supervisor drains the workers first
    asyncio.run(_engine(settings, path, ready))
    _exit_now(0)


async def _engine(settings: Settings, path: Path, ready: EventType) -> None:
    from service.engine.server import EngineServer
    from service.gateway import Gateway

    gateway = await Gateway.start(settings)
    server = EngineServer(gateway, path)
    path.unlink(missing_ok=True)  # a previous model process's
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    log.info("model process (pid %d) ready for the workers at %s", os.getpid(), path)
    ready.set()
    try:
        await stop.wait()
    finally:
        gateway.draining = True
        await gateway.close()  # jobs stop resumably, queued inputs answered, usage committed
        await server.close()


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """The gateway's port, bound (a port in use fails here, at start) but not listening."""
    sock = _socket(host)
    sock.bind((host, port))
    return sock


def listen(host: str, port: int) -> socket.socket:
    """A worker's own listening socket on the gateway's port."""
    sock = _socket(host)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def run_worker(settings: Settings, index: int, path: Path) -> None:
    """Front-end worker `index`: the HTTP gateway on its own socket on the port, models at `path`."""
    forked = _started(settings)
    if settings.gc_freeze:
        heap.manage(inherited=forked)
    log.info("worker %d (pid %d) %s", index, os.getpid(), "forked" if forked else "spawned")
    from service.app import create_app
    from service.cli.serve import server
    from service.engine.client import EngineAddress

    shared_bytes = int(settings.worker_shared_memory_mb * 2**20)
    app = create_app(settings, EngineAddress(path, worker=index, shared_bytes=shared_bytes))
    gateway = server(settings, app)
    gateway.run(sockets=[listen(settings.host, settings.port)])
    _exit_now(0 if gateway.started else 3)  # 3: its start failed, as uvicorn's own command says


def _exit_now(code: int) -> None:
    """Exit once drained and closed, without the interpreter's teardown of torch and
    transformers (seconds on a busy machine, on every stop and restart): logs flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
