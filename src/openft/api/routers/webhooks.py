"""Webhook endpoints API (``client.webhooks`` of the OpenAI SDK)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.schemas.webhooks import (
    DeletedWebhookEndpoint,
    ListWebhookEndpointsResponse,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookRotateSecret,
    WebhookTest,
)
from openft.services import webhooks as service

router = APIRouter(prefix="/webhook_endpoints", tags=["Webhooks"], route_class=OpenFTRoute)

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


@router.post("", response_model=WebhookEndpointWithSecret)
async def create_endpoint(body: WebhookEndpointCreate, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.transaction() as session:
        return wire(await service.create(session, ctx.settings, caller.org_id, body))


@router.get("", response_model=ListWebhookEndpointsResponse)
async def list_endpoints(caller: CallerDep, ctx: CtxDep, after: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
    async with ctx.reader() as db:
        return wire(await service.list_all(db, caller.org_id, after=after, limit=limit))


@router.get("/{endpoint_id}", response_model=WebhookEndpoint)
async def retrieve_endpoint(endpoint_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.reader() as db:
        return wire(service.to_wire(await service.get(db, caller.org_id, endpoint_id)))


@router.post("/{endpoint_id}", response_model=WebhookEndpoint)
async def update_endpoint(endpoint_id: str, body: WebhookEndpointUpdate, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.transaction() as session:
        return wire(await service.update(session, ctx.settings, caller.org_id, endpoint_id, body))


@router.delete("/{endpoint_id}", response_model=DeletedWebhookEndpoint)
async def delete_endpoint(endpoint_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.transaction() as session:
        return wire(await service.delete(session, caller.org_id, endpoint_id))


@router.post("/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret)
async def rotate_secret(endpoint_id: str, caller: CallerDep, ctx: CtxDep,
                        body: WebhookRotateSecret | None = None) -> Response:
    keep = body.keep_old_secret_active_for_24_hours if body else False
    async with ctx.transaction() as session:
        return wire(await service.rotate_secret(session, caller.org_id, endpoint_id, keep))


@router.post("/{endpoint_id}/test", response_model=WebhookEndpointTestResult)
async def test_endpoint(endpoint_id: str, body: WebhookTest, caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.reader() as db:
        row = await service.get(db, caller.org_id, endpoint_id)
    return wire(await service.test(row, ctx.settings, body.event_type))
