"""`/v1/files`: upload, list and delete the caller's files: datasets (purpose `fine-tune`: zips
in image-folder layout, or JSONL / CSV of text,label for text classifiers) and batch jobs' inputs
(purpose `batch`: a zip of images or JSON lines).

An upload is refused (413) by its `Content-Length` before any of it is read, and counted while
it streams into a temporary file (on disk past 1 MB), so that neither a large declaration nor
a client that sends more than it declared costs memory. The dataset is checked (every image
decoded, every text line read) on a worker thread; the other routes are plain functions, run on
worker threads too.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api import schemas as s
from service.api.deps import AppSettings, Store, Tenanted, tenant_of
from service.bodies import bounded_stream
from service.db.models import DatasetFile
from service.errors import InvalidInput, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from service.tenancy.principal import Principal
from service.training.datasets import DatasetLimits
from service.training.store import BATCH_PURPOSE, FINE_TUNE_PURPOSE, FineTuneStore, describe_file

router = APIRouter(prefix="/v1/files", tags=["fine-tuning"])
PURPOSES = (FINE_TUNE_PURPOSE, BATCH_PURPOSE)
SCOPE_OF = {FINE_TUNE_PURPOSE: "fine_tune", BATCH_PURPOSE: "inference"}  # the scope an upload needs
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field, on top of the file itself
UPLOAD_BODY = {  # the body is read by the route itself (bounded), so FastAPI cannot infer it
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "contentMediaType": "application/octet-stream",
                        "description": "fine-tune: a zip (<label>/<image> or train|validation/<label>/"
                        '<image>), or JSONL ({"text", "label"} a line) or CSV (text,label header); '
                        'batch: a zip of images, or JSON lines {"inputs": "..."}',
                    },
                    "purpose": {"type": "string", "enum": list(PURPOSES), "default": PURPOSES[0]},
                },
            }
        }
    },
}


@router.post(
    "",
    status_code=201,
    openapi_extra={"requestBody": UPLOAD_BODY},
    **s.documented(s.DatasetFile, *s.AUTHENTICATED, 413, 415, status=201),
)
async def upload_file(
    request: Request, caller: Tenanted, store: Store, settings: AppSettings
) -> dict[str, Any]:
    """Check the file completely for its purpose (422 naming the first problem, and its line for
    text), then keep it. A `fine-tune` file needs the `fine_tune` scope, a `batch` file the
    `inference` scope."""
    limit = settings.max_upload_bytes
    form = await _read_form(request, limit + MULTIPART_OVERHEAD)
    try:
        upload, purpose = _dataset_part(form, limit)
        caller.require_scope(SCOPE_OF[purpose])
        row = await anyio.to_thread.run_sync(
            store.create_file,
            tenant_of(caller),
            upload.filename or "dataset",
            upload.file,
            purpose,
            DatasetLimits.of(settings),
        )
    finally:
        await form.close()
    return describe_file(row)


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart body, at most `limit` bytes: one file part, spooled, and one field."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType("send the dataset as multipart/form-data with a 'file' part")
    parser = MultiPartParser(request.headers, bounded_stream(request, limit), max_files=1, max_fields=1)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc


def _dataset_part(form: FormData, limit: int) -> tuple[UploadFile, str]:
    """The `file` part (at most `limit` bytes) and the `purpose` field of an upload."""
    unknown = sorted(set(form.keys()) - {"file", "purpose"})
    if unknown:
        raise InvalidRequest(f"unexpected form field(s) {unknown}: send 'file' and 'purpose'")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("send the dataset (zip, JSONL or CSV) as the multipart file part 'file'")
    purpose = form.get("purpose", PURPOSES[0])
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {list(PURPOSES)}; got {purpose!r}")
    if upload.size is None or upload.size > limit:
        raise PayloadTooLarge(f"the file exceeds the upload limit of {limit} bytes")
    return upload, purpose


@router.get("", **s.documented(s.FileList, *s.AUTHENTICATED))
def list_files(caller: Tenanted, store: Store) -> dict[str, Any]:
    """The tenant's files of the purposes the key may use (a `fine_tune` key sees datasets, an
    `inference` key batch inputs)."""
    files = [f for f in store.list_files(tenant_of(caller)) if _may_use(caller, f.purpose)]
    return {"object": "list", "data": [describe_file(f) for f in files]}


@router.get("/{file_id}", **s.documented(s.DatasetFile, *s.AUTHENTICATED, 403, 404))
def get_file(file_id: str, caller: Tenanted, store: Store) -> dict[str, Any]:
    return describe_file(_file_for(caller, store, file_id))


@router.delete("/{file_id}", **s.documented(s.DeletedFile, *s.AUTHENTICATED, 403, 404, 409))
def delete_file(file_id: str, caller: Tenanted, store: Store) -> dict[str, Any]:
    _file_for(caller, store, file_id)
    row = store.delete_file(tenant_of(caller), file_id)
    return {"id": row.id, "object": "file", "deleted": True}


def _may_use(caller: Principal, purpose: str) -> bool:
    return caller.is_admin or SCOPE_OF.get(purpose, "fine_tune") in caller.scopes


def _file_for(caller: Principal, store: FineTuneStore, file_id: str) -> DatasetFile:
    """The tenant's file `file_id` (404 otherwise), if the key holds the scope of its purpose (403)."""
    row = store.get_file(tenant_of(caller), file_id)
    caller.require_scope(SCOPE_OF.get(row.purpose, "fine_tune"))
    return row
