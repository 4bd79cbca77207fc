"""Fine-tuning jobs API: create, list, retrieve, cancel/pause/resume, events, checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx
from openft.errors import InvalidRequest
from openft.schemas.jobs import (
    FineTuningJob,
    FineTuningJobCreate,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListFineTuningJobsResponse,
)
from openft.services import jobs as service

router = APIRouter(prefix="/fine_tuning/jobs", tags=["Fine-tuning"])

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


@router.post("")
async def create_job(body: FineTuningJobCreate, caller: CallerDep, ctx: CtxDep) -> FineTuningJob:
    spec = body.to_spec()
    async with ctx.transaction() as session:
        job = await service.create_job(
            session, ctx.registry, caller.org_id, spec, request_metadata=caller.tfy_metadata
        )
    return service.job_to_wire(job, gateway=caller.gateway)


@router.get("")
async def list_jobs(
    request: Request,
    caller: CallerDep,
    ctx: CtxDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListFineTuningJobsResponse:
    metadata, metadata_is_null = _metadata_filter(request)
    async with ctx.reader() as session:
        return await service.list_jobs(
            session,
            caller.org_id,
            after=after,
            limit=limit,
            metadata=metadata,
            metadata_is_null=metadata_is_null,
            gateway=caller.gateway,
        )


def _metadata_filter(request: Request) -> tuple[dict[str, str], bool]:
    """``metadata[k]=v`` pairs (deepObject style), or ``metadata=null``."""
    pairs: dict[str, str] = {}
    is_null = False
    for name, value in request.query_params.multi_items():
        if name == "metadata":
            if value != "null":
                raise InvalidRequest(
                    "Filter with metadata[key]=value, or metadata=null for jobs without metadata.",
                    param="metadata",
                )
            is_null = True
        elif name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata[") : -1]] = value
    if is_null and pairs:
        raise InvalidRequest("metadata=null cannot be combined with metadata[key].", param="metadata")
    return pairs, is_null


@router.get("/{job_id}")
async def retrieve_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> FineTuningJob:
    async with ctx.reader() as session:
        job = await service.get_job(session, caller.org_id, job_id)
    return service.job_to_wire(job, gateway=caller.gateway)


async def _act(action: str, job_id: str, caller: Caller, ctx: AppContext) -> FineTuningJob:
    async with ctx.transaction() as session:
        job = await service.apply_user_action(session, caller.org_id, job_id, action)
    return service.job_to_wire(job, gateway=caller.gateway)


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> FineTuningJob:
    return await _act("cancel", job_id, caller, ctx)


@router.post("/{job_id}/pause")
async def pause_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> FineTuningJob:
    return await _act("pause", job_id, caller, ctx)


@router.post("/{job_id}/resume")
async def resume_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> FineTuningJob:
    return await _act("resume", job_id, caller, ctx)


@router.get("/{job_id}/events")
async def list_events(
    job_id: str,
    caller: CallerDep,
    ctx: CtxDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListFineTuningJobEventsResponse:
    async with ctx.reader() as session:
        return await service.list_events(session, caller.org_id, job_id, after=after, limit=limit)


@router.get("/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str,
    caller: CallerDep,
    ctx: CtxDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListFineTuningJobCheckpointsResponse:
    async with ctx.reader() as session:
        return await service.list_checkpoints(
            session, caller.org_id, job_id, after=after, limit=limit
        )
