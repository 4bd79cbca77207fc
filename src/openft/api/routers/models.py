"""Models API: base models and the organisation's fine-tuned models."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.schemas.models import DeleteModelResponse, ListModelsResponse, Model
from openft.services import exports

router = APIRouter(prefix="/models", tags=["Models"], route_class=OpenFTRoute)

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


@router.get("", response_model=ListModelsResponse)
async def list_models(caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.reader() as db:
        return wire(await ctx.registry.list_models(db, caller.org_id))


@router.get("/{model_id:path}/export", response_class=StreamingResponse)
async def export_model(model_id: str, caller: CallerDep, ctx: CtxDep, merged: bool = False) -> Response:
    """openft extension: the model's weights as a Hugging Face folder in a tar
    archive, streamed (see ``openft.export``)."""
    export = await exports.prepare(ctx.settings, ctx.chat, ctx.reader, ctx.exports, caller.org_id, model_id,
                                   merged=merged)
    return StreamingResponse(export.stream(), media_type="application/x-tar", headers={
        "Content-Disposition": f'attachment; filename="{export.name}.tar"',
        "X-OpenFT-Export-Kind": export.kind,
    })


@router.get("/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.reader() as db:
        return wire(await ctx.registry.get_model(db, caller.org_id, model_id))


@router.delete("/{model_id:path}", response_model=DeleteModelResponse)
async def delete_model(model_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.transaction() as session:
        response, storage_key = await ctx.registry.delete_model(session, caller.org_id, model_id)
    await anyio.to_thread.run_sync(ctx.blobs.delete_tree, storage_key)
    return wire(response)
