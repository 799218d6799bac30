"""`/v1/files`: upload, list and delete the caller's dataset files (zips in image-folder layout).

Routes are plain functions (run on a worker thread): checking a zip decodes every image.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile

from service.api.deps import AppSettings, FineTuner, Store, tenant_of
from service.errors import InvalidInput, PayloadTooLarge
from service.training.datasets import DatasetLimits
from service.training.store import describe_file

router = APIRouter(prefix="/v1/files", tags=["fine-tuning"])
PURPOSES = ("fine-tune",)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field, on top of the file itself


@router.post("", status_code=201)
def upload_file(
    request: Request,
    caller: FineTuner,
    store: Store,
    settings: AppSettings,
    file: Annotated[
        UploadFile, File(description="a zip: <label>/<image> or train|validation/<label>/<image>")
    ],
    purpose: Annotated[str, Form()] = "fine-tune",
) -> dict[str, Any]:
    """Check the dataset completely (422 naming the first problem), then keep it."""
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {list(PURPOSES)}; got {purpose!r}")
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the upload is {declared} bytes; the limit is {limit} bytes")
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the file exceeds the upload limit of {limit} bytes")
    limits = DatasetLimits(
        max_files=settings.max_dataset_files,
        max_uncompressed_bytes=settings.max_dataset_uncompressed_bytes,
        max_image_pixels=settings.max_image_pixels,
        min_images_per_label=settings.min_images_per_label,
    )
    row = store.create_file(tenant_of(caller), file.filename or "dataset.zip", data, purpose, limits)
    return describe_file(row)


@router.get("")
def list_files(caller: FineTuner, store: Store) -> dict[str, Any]:
    return {"object": "list", "data": [describe_file(f) for f in store.list_files(tenant_of(caller))]}


@router.get("/{file_id}")
def get_file(file_id: str, caller: FineTuner, store: Store) -> dict[str, Any]:
    return describe_file(store.get_file(tenant_of(caller), file_id))


@router.delete("/{file_id}")
def delete_file(file_id: str, caller: FineTuner, store: Store) -> dict[str, Any]:
    row = store.delete_file(tenant_of(caller), file_id)
    return {"id": row.id, "object": "file", "deleted": True}
