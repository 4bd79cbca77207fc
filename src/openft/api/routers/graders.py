"""Graders API (OpenAI's alpha routes): validate a grader, run it on a sample."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx
from openft.api.routing import OpenFTRoute
from openft.schemas.graders import RunGraderRequest, ValidateGraderRequest

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["Graders"], route_class=OpenFTRoute)

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


@router.post("/validate")
async def validate_grader(body: ValidateGraderRequest, caller: CallerDep, ctx: CtxDep) -> dict[str, Any]:
    return await ctx.graders.validate(ctx.reader, caller.org_id, body.grader)


@router.post("/run")
async def run_grader(body: RunGraderRequest, caller: CallerDep, ctx: CtxDep) -> dict[str, Any]:
    return await ctx.graders.run(ctx.reader, caller.org_id, body)
