"""Model manifests: one YAML file per model in the models directory, validated into `ModelManifest`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

Task = Literal[
    "image-classification",
    "feature-extraction",
    "text-classification",
    "token-classification",
    "image-feature-extraction",
    "zero-shot-image-classification",
    "object-detection",
    "image-segmentation",
]
Adapter = Literal["transformers", "torch"]
COMPILABLE_TASKS = ("image-classification", "image-feature-extraction")
DType = Literal["auto", "float32", "float16", "bfloat16"]


# on a CPU a batch costs about the sum of its inputs (deit-tiny: 26 ms alone, 23 ms each in 16),
# so a long batch buys little throughput and holds every other tenant's input behind it
CONTENDED_BATCH_MS = 100.0


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=1024)
    max_delay_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue: int = Field(256, ge=1, le=100_000)  # inputs waiting, over all replicas; more -> 503
    # inputs one tenant may have waiting (its own 503 beyond); None: half of max_queue, rounded up
    max_queue_per_tenant: int | None = Field(None, ge=1, le=100_000)
    # while several tenants or classes share the model: a batch's expected forward time at most
    # this (fewer inputs); None: CONTENDED_BATCH_MS on a CPU replica, no bound on an accelerator; 0: none
    max_contended_batch_ms: float | None = Field(None, ge=0, le=60_000)

    @property
    def tenant_queue_bound(self) -> int:
        return self.max_queue_per_tenant or -(-self.max_queue // 2)

    def contended_batch_s(self, device_type: str) -> float | None:
        """The forward-time bound of a contended batch on a device of `device_type`, in seconds."""
        ms = self.max_contended_batch_ms
        if ms is None:
            ms = CONTENDED_BATCH_MS if device_type == "cpu" else 0.0
        return ms / 1000 if ms else None


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_image: float = Field(0.0, ge=0)  # per input (image or text); metering keeps micro-units
    per_compute_second: float = Field(0.0, ge=0)  # per second of the request's share of forward time
    # fine-tuning on this model as the base: per sample trained (each epoch counts), per device second
    per_training_sample: float = Field(0.0, ge=0)
    per_training_second: float = Field(0.0, ge=0)
    # asynchronous batch jobs (/v1/batches): this fraction off the inference prices, 0..1
    batch_discount: float = Field(0.0, ge=0, le=1)


class Preprocess(BaseModel):
    """Image preprocessing for the torch adapter (transformers models bring their own)."""

    model_config = ConfigDict(extra="forbid")

    resize: int = Field(256, ge=1, le=4096)  # shorter side, before the centre crop
    crop_size: int = Field(224, ge=1, le=4096)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"


class ModelManifest(BaseModel):
    """What `models/<name>.yaml` may say; see docs/models.md, "Model manifests"."""

    model_config = ConfigDict(extra="forbid")

    name: str
    task: Task
    adapter: Adapter = "transformers"
    source: str
    # `source` is a PEFT (LoRA) adapter over this model (hub id or folder): image classification only
    base_source: str | None = None
    dtype: DType = "auto"
    batching: Batching = Batching()
    replicas: int = Field(1, ge=1, le=64)
    preload: bool = True
    pinned: bool = False  # kept resident: never evicted to make room for another model
    price: Price = Price()
    description: str = ""
    # torch adapter: `file.py:function` in the source folder, returning a torch.nn.Module
    entrypoint: str | None = None
    labels: str | None = None  # torch adapter: a text file of class names, one per line
    preprocess: Preprocess = Preprocess()
    # image models: fast = JPEGs decoded at reduced scale, uint8 to the device, normalised there
    # (where the model's processor is a standard resize/crop/rescale/normalise); exact = always
    # the model's own processor on the CPU
    preprocessing: Literal["fast", "exact"] = "fast"
    # image models with fast preprocessing on a CUDA device, with torchvision installed (the `gpu`
    # extra): complete baseline JPEGs decoded there by nvJPEG, whose pixels differ from libjpeg's
    gpu_jpeg_decode: bool = False
    # image classification and image feature extraction: the forward pass compiled with
    # torch.compile at load, for batch sizes bucketed to powers of two (runtime/compiled.py)
    compile: bool = False
    # feature-extraction and image-feature-extraction: how token (patch) vectors become one vector
    # per input: their mean, or the first (CLS) token's
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    # feature-extraction: the sizes a vector may be cut to (its first N numbers, renormalised),
    # for a model trained for that (Matryoshka representation learning); OpenAI's `dimensions`
    matryoshka_dimensions: list[Annotated[int, Field(ge=1, le=65_536)]] = []
    # zero-shot-image-classification: the sentence each candidate label is put in ("{}" is the
    # label) before the text tower reads it, as the pipeline does
    hypothesis_template: Annotated[str, Field(min_length=2, max_length=500)] = "This is a photo of {}."

    @model_validator(mode="after")
    def _adapters_need_a_classifier(self) -> ModelManifest:
        if self.base_source is not None and (
            self.adapter != "transformers" or self.task not in ("image-classification", "text-classification")
        ):
            raise ValueError(
                "base_source (a LoRA adapter's base) needs adapter transformers and task "
                "image-classification or text-classification"
            )
        return self

    @model_validator(mode="after")
    def _only_pixel_models_compile(self) -> ModelManifest:
        if self.compile and self.task not in COMPILABLE_TASKS:
            raise ValueError(f"compile: true needs task {' or '.join(COMPILABLE_TASKS)}")
        return self

    @model_validator(mode="after")
    def _only_embeddings_are_cut(self) -> ModelManifest:
        if self.matryoshka_dimensions and self.task != "feature-extraction":
            raise ValueError("matryoshka_dimensions needs task feature-extraction")
        return self

    @field_validator("hypothesis_template")
    @classmethod
    def _one_place_for_the_label(cls, value: str) -> str:
        if "{}" not in value or value.count("{") != 1 or value.count("}") != 1:
            raise ValueError('must hold "{}" (where the label goes) once, and no other braces')
        return value

    @field_validator("name")
    @classmethod
    def _url_safe_name(cls, value: str) -> str:
        if not MODEL_NAME.match(value):
            raise ValueError("must be 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        return value


@dataclass(frozen=True)
class ManifestFile:
    """A manifest as read from disk: the parsed manifest, or why it could not be parsed."""

    path: Path
    manifest: ModelManifest | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.path.stem


def read_manifest(path: Path) -> ModelManifest:
    """Parse one manifest file; raises ValueError saying what is wrong."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a manifest is a YAML mapping")
    return parse_manifest(data, path.name)


def parse_manifest(data: object, origin: str) -> ModelManifest:
    """Validate one manifest (a file's YAML, or JSON sent to the admin API); raises ValueError
    naming `origin` and each wrong field, e.g. `replicas: Input should be ...`."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: a manifest is a mapping")
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{origin}: {problems}") from exc


def discover_manifests(models_dir: Path) -> list[ManifestFile]:
    """Every `*.yaml`/`*.yml` file in `models_dir`, sorted by name; bad files are kept with their error."""
    if not models_dir.is_dir():
        return []
    found: list[ManifestFile] = []
    for path in sorted([*models_dir.glob("*.yaml"), *models_dir.glob("*.yml")]):
        try:
            found.append(ManifestFile(path, read_manifest(path)))
        except ValueError as exc:
            found.append(ManifestFile(path, None, str(exc)))
    return found
