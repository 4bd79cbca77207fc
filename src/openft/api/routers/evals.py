"""Evals API (``client.evals``, ``client.evals.runs``, ``client.evals.runs.output_items``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.schemas.evals import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    DeletedEval,
    DeletedEvalRun,
    Eval,
    EvalList,
    EvalRun,
    EvalRunList,
    EvalRunOutputItem,
    EvalRunOutputItemList,
    UpdateEvalRequest,
)
from openft.services import evals as service

router = APIRouter(prefix="/evals", tags=["Evals"], route_class=OpenFTRoute)

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Literal["asc", "desc"]


def _root(request: Request) -> str:
    """The server's address as the client reached it (for ``report_url``)."""
    return str(request.base_url)


@router.post("", response_model=Eval)
async def create_eval(body: CreateEvalRequest, caller: CallerDep, ctx: CtxDep) -> Response:
    return wire(await service.create_eval(ctx, caller.org_id, body))


@router.get("", response_model=EvalList)
async def list_evals(caller: CallerDep, ctx: CtxDep, after: str | None = None, limit: Limit = 20,
                     order: Order = "asc", order_by: Literal["created_at", "updated_at"] = "created_at") -> Response:
    return wire(await service.list_evals(ctx, caller.org_id, after=after, limit=limit, order=order,
                                         order_by=order_by))


@router.get("/{eval_id}", response_model=Eval)
async def retrieve_eval(eval_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    return wire(service.eval_to_wire(await service.get_eval_row(ctx, caller.org_id, eval_id)))


@router.post("/{eval_id}", response_model=Eval)
async def update_eval(eval_id: str, body: UpdateEvalRequest, caller: CallerDep, ctx: CtxDep) -> Response:
    return wire(await service.update_eval(ctx, caller.org_id, eval_id, body))


@router.delete("/{eval_id}", response_model=DeletedEval)
async def delete_eval(eval_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    return wire(await service.delete_eval(ctx, caller.org_id, eval_id))


@router.post("/{eval_id}/runs", response_model=EvalRun)
async def create_run(eval_id: str, body: CreateEvalRunRequest, caller: CallerDep, ctx: CtxDep,
                     request: Request) -> Response:
    return wire(await service.create_run(ctx, caller.org_id, eval_id, body, _root(request)))


@router.get("/{eval_id}/runs", response_model=EvalRunList)
async def list_runs(eval_id: str, caller: CallerDep, ctx: CtxDep, request: Request, after: str | None = None,
                    limit: Limit = 20, order: Order = "asc",
                    status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None
                    ) -> Response:
    return wire(await service.list_runs(ctx, caller.org_id, eval_id, _root(request), after=after, limit=limit,
                                        order=order, status=status))


@router.get("/{eval_id}/runs/{run_id}", response_model=EvalRun)
async def retrieve_run(eval_id: str, run_id: str, caller: CallerDep, ctx: CtxDep, request: Request) -> Response:
    return wire(service.run_to_wire(await service.get_run_row(ctx, caller.org_id, eval_id, run_id), _root(request)))


@router.post("/{eval_id}/runs/{run_id}", response_model=EvalRun)
@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=EvalRun)
async def cancel_run(eval_id: str, run_id: str, caller: CallerDep, ctx: CtxDep, request: Request) -> Response:
    """Cancel: the spec's ``POST /evals/{id}/runs/{run_id}``, and ``.../cancel`` where the SDK posts it."""
    return wire(await service.cancel_run(ctx, caller.org_id, eval_id, run_id, _root(request)))


@router.delete("/{eval_id}/runs/{run_id}", response_model=DeletedEvalRun)
async def delete_run(eval_id: str, run_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    return wire(await service.delete_run(ctx, caller.org_id, eval_id, run_id))


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=EvalRunOutputItemList)
async def list_output_items(eval_id: str, run_id: str, caller: CallerDep, ctx: CtxDep, after: str | None = None,
                            limit: Limit = 20, order: Order = "asc",
                            status: Literal["pass", "fail", "error"] | None = None) -> Response:
    return wire(await service.list_items(ctx, caller.org_id, eval_id, run_id, after=after, limit=limit,
                                         order=order, status=status))


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=EvalRunOutputItem)
async def retrieve_output_item(eval_id: str, run_id: str, output_item_id: str, caller: CallerDep,
                               ctx: CtxDep) -> Response:
    return wire(await service.get_item(ctx, caller.org_id, eval_id, run_id, output_item_id))
