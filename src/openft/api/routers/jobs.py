"""Fine-tuning jobs API: create, list, retrieve, cancel/pause/resume, events, checkpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.domain import METADATA_MAX_PAIRS, JobStatus
from openft.errors import InvalidRequest
from openft.schemas.evals import EvalRunList
from openft.schemas.jobs import (
    FineTuningJob,
    FineTuningJobCreate,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListFineTuningJobsResponse,
)
from openft.services import estimates
from openft.services import jobs as service

router = APIRouter(prefix="/fine_tuning/jobs", tags=["Fine-tuning"], route_class=OpenFTRoute)

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


@router.post("", response_model=FineTuningJob)
async def create_job(body: FineTuningJobCreate, caller: CallerDep, ctx: CtxDep) -> Response:
    from openft.services import evals

    spec = await service.with_checked_grader(body.to_spec(), caller.org_id, ctx.graders, ctx.reader)
    spec = await evals.check_job_eval(ctx, caller.org_id, spec)
    try:
        async with ctx.transaction() as session:
            job = await service.create_job(
                session, ctx.registry, caller.org_id, spec, request_metadata=caller.tfy_metadata,
                executor=ctx.settings.executor,
            )
    except BaseException:
        await evals.forget_job_eval(ctx, spec)  # its stored items belong to no job
        raise
    ctx.wake_worker()
    return wire(service.job_to_wire(job, gateway=caller.gateway))


@router.post("/estimate")
async def estimate_job(body: FineTuningJobCreate, caller: CallerDep, ctx: CtxDep) -> dict[str, Any]:
    """openft extension: what the job would cost (the same body as create;
    nothing is created). See ``openft.training.estimate``."""
    from openft.services import evals

    spec = await service.with_checked_grader(body.to_spec(), caller.org_id, ctx.graders, ctx.reader)
    spec = await evals.check_job_eval(ctx, caller.org_id, spec, store=False)
    async with ctx.estimates.slot(caller.org_id):
        return await estimates.estimate(ctx.transaction, ctx.settings, ctx.registry, caller.org_id, spec,
                                        zygote=ctx.zygote)


@router.get("", response_model=ListFineTuningJobsResponse)
async def list_jobs(
    request: Request,
    caller: CallerDep,
    ctx: CtxDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: JobStatus | None = None,  # openft extension; an unknown one is a 400 naming the field
) -> Response:
    metadata, metadata_is_null = _metadata_filter(request)
    async with ctx.reader() as session:
        listing = await service.list_jobs(
            session,
            caller.org_id,
            after=after,
            limit=limit,
            metadata=metadata,
            metadata_is_null=metadata_is_null,
            status=status.value if status else None,
            gateway=caller.gateway,
        )
    return wire(listing)


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
    if any("\x00" in text for pair in pairs.items() for text in pair):
        raise InvalidRequest("A metadata filter holds a NUL character (\\u0000), which no job's metadata "
                             "can hold.", param="metadata")
    if is_null and pairs:
        raise InvalidRequest("metadata=null cannot be combined with metadata[key].", param="metadata")
    if len(pairs) > METADATA_MAX_PAIRS:
        raise InvalidRequest(
            f"Filter with at most {METADATA_MAX_PAIRS} metadata[key]=value pairs (a job carries at most "
            f"{METADATA_MAX_PAIRS}); got {len(pairs)}.", param="metadata")
    return pairs, is_null


@router.get("/{job_id}", response_model=FineTuningJob)
async def retrieve_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.reader() as session:
        job = await service.get_job(session, caller.org_id, job_id)
    return wire(service.job_to_wire(job, gateway=caller.gateway))


async def _act(action: str, job_id: str, caller: Caller, ctx: AppContext) -> Response:
    async with ctx.transaction() as session:
        job = await service.apply_user_action(session, caller.org_id, job_id, action)
    if action == "resume":
        ctx.wake_worker()
    return wire(service.job_to_wire(job, gateway=caller.gateway))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    return await _act("cancel", job_id, caller, ctx)


@router.post("/{job_id}/pause", response_model=FineTuningJob)
async def pause_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    return await _act("pause", job_id, caller, ctx)


@router.post("/{job_id}/resume", response_model=FineTuningJob)
async def resume_job(job_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    return await _act("resume", job_id, caller, ctx)


@router.get("/{job_id}/events", response_model=ListFineTuningJobEventsResponse)
async def list_events(
    job_id: str,
    caller: CallerDep,
    ctx: CtxDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    async with ctx.reader() as session:
        events = await service.list_events(session, caller.org_id, job_id, after=after, limit=limit)
    return wire(events)


@router.get("/{job_id}/eval_runs", response_model=EvalRunList)
async def list_eval_runs(job_id: str, caller: CallerDep, ctx: CtxDep, request: Request) -> Response:
    """openft extension: the eval runs of the job's fine-tuned model and checkpoints, newest first."""
    from openft.services import evals

    return wire(await evals.runs_of_job(ctx, caller.org_id, job_id, str(request.base_url)))


@router.get("/{job_id}/checkpoints", response_model=ListFineTuningJobCheckpointsResponse)
async def list_checkpoints(
    job_id: str,
    caller: CallerDep,
    ctx: CtxDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    async with ctx.reader() as session:
        checkpoints = await service.list_checkpoints(
            session, caller.org_id, job_id, after=after, limit=limit
        )
    return wire(checkpoints)
