"""Files API: upload (streamed), list, retrieve, download (streamed), delete."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.api.uploads import receive_upload
from openft.schemas.files import DeleteFileResponse, ListFilesResponse, OpenAIFile
from openft.services import files as service

router = APIRouter(tags=["Files"], route_class=OpenFTRoute)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post("/files", openapi_extra=_UPLOAD_BODY, response_model=OpenAIFile)
async def create_file(
    request: Request,
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> Response:
    form = await receive_upload(request, ctx.blobs, caller.org_id, ctx.settings.max_file_bytes)
    created = await service.create_file(
        ctx.transaction, ctx.blobs, caller.org_id, form.upload, filename=form.filename, fields=form.fields
    )
    return wire(created)


@router.get("/files", response_model=ListFilesResponse)
async def list_files(
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    async with ctx.reader() as session:
        listing = await service.list_files(
            session, caller.org_id, purpose=purpose, after=after, limit=limit, order=order
        )
    return wire(listing)


@router.get("/files/{file_id}", response_model=OpenAIFile)
async def retrieve_file(
    file_id: str,
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> Response:
    async with ctx.reader() as session:
        row = await service.get_file(session, caller.org_id, file_id)
    return wire(service.file_to_wire(row))


@router.get("/files/{file_id}/content")
async def download_file(
    file_id: str,
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> StreamingResponse:
    async with ctx.reader() as session:
        row = await service.get_file(session, caller.org_id, file_id)
    return StreamingResponse(
        service.stream_content(ctx.blobs, row.storage_key),
        media_type="application/octet-stream",
        headers=service.download_headers(row),
    )


@router.delete("/files/{file_id}", response_model=DeleteFileResponse)
async def delete_file(
    file_id: str,
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> Response:
    async with ctx.transaction() as session:
        response, storage_key = await service.delete_file(session, caller.org_id, file_id)
    await anyio.to_thread.run_sync(ctx.blobs.delete, storage_key)
    return wire(response)
