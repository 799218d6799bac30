"""The trainer: fine-tuning of a transformers image or text classifier with one plain torch loop,
either in full (every weight) or with LoRA (PEFT adapters on the attention query/value projections
and a new classifier head; the base weights stay frozen and the saved artifact is the adapter alone).
The task (`image-classification` or `text-classification`) decides only how the model is built
and its inputs encoded (`service.serving.runtime.classifiers`); the loop is the same.

AdamW with transformers' linear warm-up/decay schedule; shuffled mini-batches, seeded per
epoch so that a resumed run sees the same order; an evaluation on the validation set and a
checkpoint (model, optimizer, schedule, epoch, step) after every epoch. Between steps it
yields to inference (`Control.pending`) and stops at once when interrupted (cancel, or the
gateway shutting down).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from service.serving.devices import computing_since, on_threads, use_threads
from service.serving.runtime.classifiers import classifier_class, encode, load_classifier, load_preprocessor

CHECKPOINT = "checkpoint.pt"
LABELS = "labels.json"  # a LoRA artifact's label set (the base's config keeps the base's labels)
LORA_TARGETS = ["q_proj", "v_proj", "query", "value"]  # attention query/value (transformers 5 names, 4 names)
HEAD = "classifier"  # trained in full next to the adapter (PEFT's modules_to_save)
EVAL_BATCH = 64
WARMUP = 0.05  # of all steps: the learning rate rises linearly, then decays linearly to 0

T = TypeVar("T")


class Interrupted(Exception):
    """Training stopped before the end: `reason` is `cancelled` or `stopping`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepObserver(Protocol):
    """Told of each training step and of each wait for inference (the runner's metrics)."""

    def step(self, seconds: float, samples: int) -> None: ...

    def yielded(self, seconds: float) -> None: ...


@dataclass
class Control:
    """How the runner steers a training thread: inference first, cancel, stop."""

    pending: Callable[[], int] = lambda: 0  # inputs waiting for the device; train only while 0
    max_yield_s: float = 0.0  # take a step anyway after waiting this long (0: wait as long as it takes)
    cpu_threads: int = 1  # torch threads (and cores held) of each step on a CPU
    observer: StepObserver | None = None
    interrupt: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    steps_done: int = 0
    samples: int = 0
    device_seconds: float = 0.0

    def stop(self, reason: str) -> None:
        if not self.interrupt.is_set():
            self.reason = reason
            self.interrupt.set()

    def check(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted(self.reason)

    def yield_to_inference(self) -> None:
        """Wait while inference has work on this device (woken early by an interrupt), but no
        longer than `max_yield_s`: under endless inference, training still takes a step that often."""
        started = time.perf_counter()
        deadline = started + self.max_yield_s if self.max_yield_s > 0 else float("inf")
        waited = False
        while self.pending() > 0 and not self.interrupt.is_set() and time.perf_counter() < deadline:
            waited = True
            self.interrupt.wait(0.002)
        if waited and self.observer is not None:
            self.observer.yielded(time.perf_counter() - started)

    def stepped(self, seconds: float, samples: int) -> None:
        self.steps_done += 1
        self.samples += samples
        self.device_seconds += seconds
        if self.observer is not None:
            self.observer.step(seconds, samples)


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int = 0
    lora_rank: int = 8  # LoRA only: the adapters' rank
    lora_alpha: int = 16  # LoRA only: their scale is alpha / rank


@dataclass
class EpochReport:
    epoch: int  # 1-based
    train_loss: float
    validation_loss: float
    validation_accuracy: float


@dataclass
class TrainingData:
    labels: list[str]
    train_inputs: list[Any]  # PIL images (image-classification) or texts (text-classification)
    train_labels: list[int]
    validation_inputs: list[Any]
    validation_labels: list[int]


@dataclass
class Outcome:
    metrics: dict[str, Any]
    resumed_from_epoch: int  # 0: started fresh


def load_base(base_folder: Path, labels: list[str], task: str = "image-classification") -> tuple[Any, Any]:
    """The base model with a new classifier head for `labels`, and the base's own image processor
    (or tokenizer)."""
    model = load_classifier(task, base_folder, labels, local_files_only=True)
    return model, load_preprocessor(task, base_folder)


def lora_targets_in(base_folder: Path, task: str = "image-classification") -> list[str]:
    """The layers of the model in `base_folder` that LoRA would adapt (none: it cannot be LoRA
    fine-tuned). Built on the meta device from its config alone: no weights are read."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_folder, local_files_only=True)
    with torch.device("meta"):
        model = classifier_class(task).from_config(config)
    return [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in LORA_TARGETS]


def with_lora(model: Any, params: Hyperparameters) -> Any:
    """`model` wrapped by PEFT: LoRA adapters on the attention query/value projections, the new
    classifier head trained in full, every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=0.1,
        target_modules=LORA_TARGETS,
        modules_to_save=[HEAD],
    )
    return get_peft_model(model, config)


def _trained_state(model: Any, method: str) -> dict[str, Any]:
    """What a checkpoint keeps of the model: everything (full), or only what trains (LoRA)."""
    if method == "lora":
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    state: dict[str, Any] = model.state_dict()
    return state


def _save(model: Any, processor: Any, labels: list[str], method: str, folder: Path) -> None:
    """The result: a full model folder, or (LoRA) the adapter, its head, the labels and the processor."""
    model.save_pretrained(folder)  # PEFT saves adapter_config.json and adapter_model.safetensors only
    processor.save_pretrained(folder)
    if method == "lora":
        (folder / LABELS).write_text(json.dumps(labels), encoding="utf-8")


def _rows(features: dict[str, torch.Tensor], index: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs for the examples at `index` (a slice or index tensor), on `device`."""
    return {name: value[index].to(device) for name, value in features.items()}


def _evaluate(
    model: Any, features: dict[str, torch.Tensor], targets: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(targets), EVAL_BATCH):
            rows = slice(i, i + EVAL_BATCH)
            labels = targets[rows].to(device)
            out = model(**_rows(features, rows, device), labels=labels)
            loss_sum += float(out.loss) * len(labels)
            correct += int((out.logits.argmax(-1) == labels).sum())
    n = max(1, len(targets))
    return loss_sum / n, correct / n


def _computed(device: torch.device, threads: int, call: Callable[[], T]) -> tuple[T, float]:
    """`call()`'s result and the seconds it computed. On a CPU it first holds `threads` of the
    process's cores and runs where inference passes on as many threads run, taking turns with
    them (`on_threads`: no second OpenMP team); the wait for the cores is not device time."""
    called = time.perf_counter()
    result = on_threads(threads, call) if device.type == "cpu" else call()
    return result, time.perf_counter() - computing_since(called)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # a crash mid-write leaves the previous checkpoint intact


def train(
    *,
    base_folder: Path,
    data: TrainingData,
    params: Hyperparameters,
    device: torch.device,
    work_dir: Path,
    output_dir: Path,
    control: Control,
    on_epoch: Callable[[EpochReport], None],
    method: str = "full",
    task: str = "image-classification",
) -> Outcome:
    """Fine-tune the `task` model in `base_folder` on `data` (`method` full or lora); save the
    result (and the image processor or tokenizer) to `output_dir`.

    Resumes from `work_dir/checkpoint.pt` when there is one. Raises `Interrupted` when stopped.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        use_threads(1)  # loading and encoding on this thread: a team of its own would be a second
    model, processor = load_base(base_folder, data.labels, task)
    if method == "lora":
        model = with_lora(model, params)
    model.to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=params.learning_rate)
    train_x = encode(task, processor, model.config, data.train_inputs)
    train_y = torch.tensor(data.train_labels, dtype=torch.long)
    val_x = encode(task, processor, model.config, data.validation_inputs)
    val_y = torch.tensor(data.validation_labels, dtype=torch.long)
    steps_per_epoch = math.ceil(len(train_y) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup = math.ceil(total_steps * WARMUP)
    # here, not at the top: its module imports PEFT, 134 MiB in every process that imports the app
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)  # type: ignore[no-untyped-call]

    checkpoint_path = work_dir / CHECKPOINT
    start_epoch, history = 0, []
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"], strict=method != "lora")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        control.steps_done = int(state["steps_done"])
        control.samples = int(state["samples"])  # the work behind the checkpoint, metered once
        control.device_seconds = float(state.get("device_seconds", 0.0))
    resumed_from = start_epoch

    for epoch in range(start_epoch, params.epochs):
        model.train()
        # dropout draws from torch's global generator: seed it per epoch so a run (and its resume) repeats
        torch.manual_seed(params.seed + epoch)
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(params.seed + epoch))
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            control.check()
            control.yield_to_inference()
            control.check()
            index = order[step * params.batch_size : (step + 1) * params.batch_size]

            def take_step(index: torch.Tensor = index) -> float:
                loss = model(**_rows(train_x, index, device), labels=train_y[index].to(device)).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                return float(loss.detach())

            loss, seconds = _computed(device, control.cpu_threads, take_step)
            loss_sum += loss * len(index)
            control.stepped(seconds, len(index))
        evaluated, seconds = _computed(
            device, control.cpu_threads, lambda: _evaluate(model, val_x, val_y, device)
        )
        val_loss, val_accuracy = evaluated
        control.device_seconds += seconds
        report = EpochReport(epoch + 1, loss_sum / max(1, len(train_y)), val_loss, val_accuracy)
        history.append(report.__dict__)
        _save_checkpoint(
            checkpoint_path,
            {
                "model": _trained_state(model, method),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "steps_done": control.steps_done,
                "samples": control.samples,
                "device_seconds": control.device_seconds,
                "history": history,
            },
        )
        on_epoch(report)

    partial = output_dir.with_name(output_dir.name + ".partial")
    for stale in (partial, output_dir):
        shutil.rmtree(stale, ignore_errors=True)
    _save(model, processor, data.labels, method, partial)
    partial.replace(output_dir)
    last = history[-1] if history else {}
    metrics = {
        "validation_accuracy": last.get("validation_accuracy"),
        "validation_loss": last.get("validation_loss"),
        "train_loss": last.get("train_loss"),
        "train_samples": len(train_y),
        "validation_samples": len(val_y),
        "epochs": history,
    }
    return Outcome(metrics, resumed_from)
