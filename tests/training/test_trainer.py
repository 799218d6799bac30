"""The trainer on the tiny ViT: it takes no step while inference has work queued on its device,
and stops at the next step when interrupted."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from prometheus_client import CollectorRegistry

from service.training.metrics import TrainingMetrics
from service.training.trainer import (
    Control,
    EpochReport,
    Hyperparameters,
    Interrupted,
    Outcome,
    TrainingData,
    train,
)
from tests.training.zips import COLOURS, png

ROOT = Path(__file__).resolve().parents[2]


def data(per_label: int = 6) -> TrainingData:
    images = [
        Image.open(io.BytesIO(png(COLOURS[c], seed=i))).convert("RGB")
        for c in ("red", "blue")
        for i in range(per_label)
    ]
    labels = [0] * per_label + [1] * per_label
    return TrainingData(["red", "blue"], images, labels, images[:2] + images[-2:], [0, 0, 1, 1])


def train_tiny(
    folder: Path,
    tmp_path: Path,
    control: Control,
    *,
    epochs: int,
    on_epoch: Callable[[EpochReport], None] = lambda report: None,
    method: str = "full",
    lora_rank: int = 8,
) -> Outcome:
    """Train the tiny ViT at `folder` on `data()`, batches of 4 (3 steps an epoch), under `control`."""
    return train(
        base_folder=folder,
        data=data(),
        params=Hyperparameters(epochs=epochs, learning_rate=0.01, batch_size=4, lora_rank=lora_rank),
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
        output_dir=tmp_path / "out",
        control=control,
        on_epoch=on_epoch,
        method=method,
    )


def test_no_step_is_taken_while_inference_is_pending(tiny_vit_dir: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    control = Control(observer=TrainingMetrics(registry))
    seen: list[tuple[int, int]] = []  # (queued inputs reported, steps done at that moment)

    def pending() -> int:
        queued = 1 if len(seen) < 40 else 0  # inference has work for the first 40 looks, then none
        seen.append((queued, control.steps_done))
        return queued

    control.pending = pending
    epochs: list[EpochReport] = []
    train_tiny(tiny_vit_dir, tmp_path, control, epochs=2, on_epoch=epochs.append)
    assert all(steps == 0 for queued, steps in seen if queued)  # waited for inference before step 1
    assert control.steps_done == 6 and control.samples == 24
    assert [e.epoch for e in epochs] == [1, 2]
    # the metrics saw each step, and the 39 waits of at least 2 ms each for inference
    assert registry.get_sample_value("maas_training_steps_total") == 6
    assert registry.get_sample_value("maas_training_samples_total") == 24
    assert registry.get_sample_value("maas_training_step_seconds_count") == 6
    assert (registry.get_sample_value("maas_training_yield_seconds_total") or 0) >= 39 * 0.002
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "work" / "checkpoint.pt").exists()


def test_endless_inference_slows_training_but_never_starves_it(tiny_vit_dir: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    control = Control(pending=lambda: 1, max_yield_s=0.05, observer=TrainingMetrics(registry))
    finished = threading.Event()

    def run() -> None:
        train_tiny(tiny_vit_dir, tmp_path, control, epochs=1)
        finished.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    if not finished.wait(120):  # without the cap the job waits for inference forever
        control.stop("cancelled")
        pytest.fail("training took no step while inference always had work")
    # each of the 3 steps came after waiting out the cap for inference
    assert control.steps_done == 3
    assert (registry.get_sample_value("maas_training_yield_seconds_total") or 0) >= 3 * 0.05


def test_an_interrupt_stops_training_before_the_next_step(tiny_vit_dir: Path, tmp_path: Path) -> None:
    control = Control()

    def cancel_after_first_epoch(report: EpochReport) -> None:
        control.stop("cancelled")

    with pytest.raises(Interrupted) as stopped:
        train_tiny(tiny_vit_dir, tmp_path, control, epochs=5, on_epoch=cancel_after_first_epoch)
    assert stopped.value.reason == "cancelled"
    assert control.steps_done == 3  # epoch 1 only
    assert not (tmp_path / "out").exists()


def test_a_lora_run_checkpoints_only_what_trains_and_resumes(tiny_vit_dir: Path, tmp_path: Path) -> None:
    first = Control()

    def stop_after_first_epoch(report: EpochReport) -> None:
        first.stop("stopping")

    def run(control: Control, on_epoch: Callable[[EpochReport], None]) -> Outcome:
        return train_tiny(
            tiny_vit_dir, tmp_path, control, epochs=2, on_epoch=on_epoch, method="lora", lora_rank=4
        )

    with pytest.raises(Interrupted):
        run(first, stop_after_first_epoch)
    state = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)["model"]
    assert state and all("lora_" in name or "classifier" in name for name in state)

    second = Control()
    outcome = run(second, lambda report: None)
    assert outcome.resumed_from_epoch == 1
    assert second.steps_done == 6 and second.samples == 24  # epoch 1 restored, epoch 2 run
    assert [e["epoch"] for e in outcome.metrics["epochs"]] == [1, 2]
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


SENTIMENTS = [
    (f"{who} {verb} a {word} movie", label)
    for who in ("alice", "bob", "the")
    for verb in ("visited", "was")
    for word, label in (("good", 1), ("great", 1), ("bad", 0), ("terrible", 0))
]


def test_the_same_loop_learns_text_and_saves_its_tokenizer(
    tiny_text_classifier_dir: Path, tmp_path: Path
) -> None:
    """The tiny BERT (three random-head sentiments) retrained on two labels reads its own word
    pieces and separates them: every held-out sentence right after a few epochs."""
    texts, labels = [t for t, _ in SENTIMENTS], [y for _, y in SENTIMENTS]
    held = ["paris was a great movie", "london was a terrible movie"]  # subjects it never saw
    held += ["paris visited a good movie", "london visited a bad movie"]
    data = TrainingData(["negative", "positive"], texts, labels, held, [1, 0, 1, 0])
    epochs: list[EpochReport] = []
    outcome = train(
        base_folder=tiny_text_classifier_dir,
        data=data,
        params=Hyperparameters(epochs=30, learning_rate=0.01, batch_size=8),
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
        output_dir=tmp_path / "out",
        control=Control(),
        on_epoch=epochs.append,
        task="text-classification",
    )
    assert epochs[-1].train_loss < 0.3 < epochs[0].train_loss  # from chance (ln 2) to learnt
    assert outcome.metrics["validation_accuracy"] == 1.0, outcome.metrics["epochs"]
    assert outcome.metrics["train_samples"] == 24
    from transformers import AutoConfig, AutoTokenizer

    saved = AutoConfig.from_pretrained(tmp_path / "out")
    assert saved.id2label == {0: "negative", 1: "positive"}
    assert AutoTokenizer.from_pretrained(tmp_path / "out").tokenize("alice") == ["alice"]


# A process whose inference passes on 2 intra-op threads made the OpenMP team (the wide thread's);
# then a fine-tune on 2 threads runs on the main thread, counting, after each epoch, the threads
# Python did not start (OpenMP's helpers) the process has gained since; prints the largest count.
_TRAIN_BESIDE_INFERENCE = """
import os, sys, threading
from pathlib import Path
import torch
from service.serving.devices import on_threads
from service.training.trainer import Control, Hyperparameters, train
from tests.training.test_trainer import data

import transformers.optimization  # what train() imports, first: it starts a (non-OpenMP) thread

torch.set_num_threads(2)
weights = torch.rand(512, 512)
for _ in range(20):
    on_threads(2, lambda: weights @ weights)
def native():
    return len(os.listdir("/proc/self/task")) - threading.active_count()

before = native()
gained = []
work = Path(sys.argv[2])
train(
    base_folder=Path(sys.argv[1]),
    data=data(),
    params=Hyperparameters(epochs=2, learning_rate=0.01, batch_size=4),
    device=torch.device("cpu"),
    work_dir=work / "work",
    output_dir=work / "out",
    control=Control(cpu_threads=2),
    on_epoch=lambda report: gained.append(native() - before),
)
print(max(gained))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_a_fine_tune_on_several_threads_adds_no_openmp_team(tiny_vit_dir: Path, tmp_path: Path) -> None:
    """Its steps take turns with the inference passes on the process's one team: a second team
    would make lone inference passes on several threads twice as slow while the job runs."""
    done = subprocess.run(
        [sys.executable, "-c", _TRAIN_BESIDE_INFERENCE, str(tiny_vit_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 0
