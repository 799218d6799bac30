"""The job runner: claims queued jobs from the database, one at a time, and trains each on a
device of the shared pool (in a thread), heartbeating its lease, then registers the result.

Started in the app's lifespan. On shutdown it interrupts the running job after its current
step and gives its lease up: the next gateway (or another replica) resumes it from its last
checkpoint. A replica that dies without doing so loses its lease after `fine_tune_lease_s`.

Metering: a job's training is one usage event (kind `training`, keyed by the job id), written in
the transaction that ends the job, so it is written once whatever restarts and takeovers came
before. It counts the work behind the job's checkpointed progress plus what the final run did
after it: samples and device time are saved with each checkpoint and restored on resume, and the
work a dead or stopped replica did after its last checkpoint (redone by the next one) is not billed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from service.db.leases import ClaimLoop, heartbeat_every
from service.db.models import FineTuneJob
from service.errors import ModelUnavailable
from service.metering import Meter
from service.serving.devices import DevicePool
from service.serving.registry import ModelEntry, ModelRegistry, ModelStatus
from service.serving.runtime.sources import resolve_local_folder
from service.settings import Settings
from service.training.dataset_files import training_data
from service.training.datasets import DatasetLimits
from service.training.finished import FinishedModels, fine_tuned_name, models_dir
from service.training.metrics import TrainingMetrics
from service.training.store import FineTuneStore
from service.training.trainer import Control, EpochReport, Hyperparameters, Interrupted, TrainingData, train

log = logging.getLogger(__name__)


class JobRunner(ClaimLoop[FineTuneJob]):
    """Runs fine-tuning jobs from the database on the device pool, one at a time per replica."""

    def __init__(
        self,
        store: FineTuneStore,
        registry: ModelRegistry,
        pool: DevicePool,
        settings: Settings,
        finished: FinishedModels,
        *,
        meter: Meter | None = None,
        metrics: TrainingMetrics | None = None,
    ) -> None:
        super().__init__("maas-fine-tune-runner")
        self.store = store
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.finished = finished
        self.meter = meter  # None: training is not metered (tests of the runner alone)
        self.metrics = metrics
        self.controls: dict[str, Control] = {}
        # called (on the training thread) after each epoch's checkpoint is written: (job id, epoch)
        self.checkpoint_listeners: list[Callable[[str, int], None]] = []

    def cancel(self, job_id: str) -> None:
        """Stop a job this replica runs at its next step (others learn of it on their heartbeat)."""
        if (control := self.controls.get(job_id)) is not None:
            control.stop("cancelled")

    async def stop(self) -> None:
        """Interrupt the running job after its current step, hand its lease back, and end."""
        self._stopping = True
        for control in self.controls.values():
            control.stop("stopping")
        await self._ended()

    def _claim(self) -> FineTuneJob | None:
        return self.store.claim(self.owner, self.settings.fine_tune_lease_s)

    def _device(self) -> torch.device:
        """The device with the least inference waiting (ties: the first)."""
        return min(self.pool.devices, key=self.pool.pending)

    async def _run(self, job: FineTuneJob) -> None:
        device = self._device()
        log.info("fine-tuning job %s: claimed by %s, on %s", job.id, self.owner, device)
        control = Control(
            pending=lambda: self.pool.pending(device),
            cpu_threads=self.settings.fine_tune_threads,
            max_yield_s=self.settings.fine_tune_max_yield_s,
            observer=self.metrics,
        )
        self.controls[job.id] = control
        if self.metrics is not None:
            self.metrics.running.inc()
        if self._stopping:
            control.stop("stopping")
        try:
            # a base fine-tuned by another replica after this one started: registered before training
            await self.finished.discover(self.registry, job.tenant_id, job.base_model)
            # on a thread of its own, which ends with the job (its CPU steps hold their cores and
            # take turns with the inference passes: trainer._computed)
            own = ThreadPoolExecutor(1, thread_name_prefix="maas-train")
            work = asyncio.get_running_loop().run_in_executor(own, self._train, job, device, control)
            own.shutdown(wait=False)  # the thread exits once the job is done
            while not work.done():
                await asyncio.wait({work}, timeout=heartbeat_every(self.settings.fine_tune_lease_s))
                if not work.done():
                    await self._heartbeat(job, control)
            name, metrics = await work
            await self._heartbeat(job, control)
            if control.reason == "lost":
                raise Interrupted("lost")
            entry = self.registry.add_fine_tuned(
                name, models_dir(self.settings.data_dir) / name, job.tenant_id, job.base_model
            )
            await self._load(entry)
            await self._finish(
                job,
                control,
                "succeeded",
                f"job succeeded: model {name} is {entry.status.value}",
                fine_tuned_model=name,
                metrics=metrics,
            )
            log.info("fine-tuning job %s: succeeded on %s, model %s", job.id, self.owner, name)
        except Interrupted as stopped:
            if stopped.reason == "cancelled":
                await self._finish(job, control, "cancelled", "job cancelled")
            elif stopped.reason == "stopping":
                await asyncio.to_thread(self.store.release, job.id, self.owner)
            else:  # lost: another replica resumed it from the checkpoint; leave it be
                log.warning("fine-tuning job %s: lease lost to another replica; stopped here", job.id)
        except Exception as exc:
            log.exception("fine-tuning job %s failed", job.id)
            message = str(exc) or type(exc).__name__
            await self._finish(job, control, "failed", f"job failed: {message}", error=message[:2000])
        finally:
            self.controls.pop(job.id, None)
            if self.metrics is not None:
                self.metrics.running.dec()

    async def _load(self, entry: ModelEntry) -> None:
        """Load the new model, or leave it to load on its first use where the memory budget has no
        room within a lease's third (models in use); raise if its weights cannot be loaded."""
        try:
            async with asyncio.timeout(self.settings.fine_tune_lease_s / 3):  # the lease is not renewed
                await self.registry.ensure_loaded(entry)
        except (TimeoutError, ModelUnavailable) as waited:
            log.info("fine-tuned model %s not loaded now (%s): it loads on first use", entry.name, waited)
        if entry.status is ModelStatus.UNAVAILABLE:
            raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}")

    async def _finish(
        self, job: FineTuneJob, control: Control, status: str, message: str, **values: Any
    ) -> None:
        """End the job with its usage event: what it trained is billed, unless it failed (recorded free)."""
        usage = None
        if self.meter is not None and self.meter.enabled:
            usage = self.meter.training_usage(
                job_id=job.id,
                tenant_id=job.tenant_id,
                key_id=job.key_id or "",
                base_model=job.base_model,
                samples=control.samples,
                device_seconds=control.device_seconds,
                billed=status != "failed",
            )
        ended = await asyncio.to_thread(
            self.store.finish,
            job.id,
            self.owner,
            status,
            message,
            usage=usage,
            **_progress(control),
            **values,
        )
        if not ended:
            log.warning("fine-tuning job %s: no longer this runner's; another replica ends it", job.id)
            return
        if self.metrics is not None:
            self.metrics.jobs.labels(status).inc()
        if usage is not None and self.meter is not None:
            self.meter.counted(usage)

    async def _heartbeat(self, job: FineTuneJob, control: Control) -> None:
        state = await asyncio.to_thread(
            self.store.heartbeat,
            job.id,
            self.owner,
            self.settings.fine_tune_lease_s,
            **_progress(control),
        )
        if state != "ok":  # cancelled (maybe through another replica), or the lease was lost
            control.stop(state)

    # -- on the training thread ---------------------------------------------------------------

    def _train(self, job: FineTuneJob, device: torch.device, control: Control) -> tuple[str, dict[str, Any]]:
        data = self._training_data(job)
        params = Hyperparameters(**job.hyperparameters)
        steps_per_epoch = -(-len(data.train_labels) // params.batch_size)
        self.store.heartbeat(
            job.id, self.owner, self.settings.fine_tune_lease_s, steps_total=steps_per_epoch * params.epochs
        )
        name = fine_tuned_name(job.base_model, job.suffix, job.id)
        work_dir = self.settings.data_dir / "fine_tunes" / job.id
        if (work_dir / "checkpoint.pt").exists():
            self.store.add_event(job.id, "resume", "resuming from the last checkpoint")

        def on_epoch(report: EpochReport) -> None:
            self.store.add_event(
                job.id,
                "epoch",
                f"epoch {report.epoch}/{params.epochs}: loss {report.train_loss:.4f}, "
                f"validation accuracy {report.validation_accuracy:.4f}",
                dict(report.__dict__),
            )
            self.store.heartbeat(
                job.id,
                self.owner,
                self.settings.fine_tune_lease_s,
                epochs_done=report.epoch,
                **_progress(control),
            )
            for listener in self.checkpoint_listeners:
                listener(job.id, report.epoch)

        base = self.registry.get(job.base_model)
        assert base.manifest is not None
        base_folder = resolve_local_folder(base.manifest.source, base.manifest_path.parent)
        if base_folder is None:
            raise ValueError(f"base model {job.base_model!r} has no local folder to fine-tune")
        outcome = train(
            base_folder=base_folder,
            data=data,
            params=params,
            device=device,
            work_dir=work_dir,
            output_dir=models_dir(self.settings.data_dir) / name,
            control=control,
            on_epoch=on_epoch,
            method=job.method,
            task=base.manifest.task,
        )
        if outcome.resumed_from_epoch:
            self.store.add_event(
                job.id, "resume", f"resumed after epoch {outcome.resumed_from_epoch} and finished"
            )
        return name, outcome.metrics

    def _training_data(self, job: FineTuneJob) -> TrainingData:
        train_file = self.store.get_file(job.tenant_id, job.training_file)
        validation = None
        if job.validation_file:
            validation = self.store.file_path(self.store.get_file(job.tenant_id, job.validation_file))
        seed = int(job.hyperparameters.get("seed", 0))
        limits = DatasetLimits.of(self.settings)
        return training_data(self.store.file_path(train_file), validation, seed, limits)


def _progress(control: Control) -> dict[str, Any]:
    """The training progress a job's row records: steps, samples and device time so far."""
    return {
        "steps_done": control.steps_done,
        "trained_samples": control.samples,
        "device_seconds": control.device_seconds,
    }
