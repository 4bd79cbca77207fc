"""Webhook endpoints of an organisation: register, change, rotate the
signing secret, test, delete. Delivery is ``scheduler.webhooks``; events are
recorded by ``store.queries.jobs.transition_job`` when a job ends."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from openft import domain
from openft.config import Settings
from openft.errors import InvalidRequest, NotFound
from openft.scheduler.webhooks import UnsafeURL, check_url, post
from openft.schemas.webhooks import (
    DeletedWebhookEndpoint,
    ListWebhookEndpointsResponse,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
)
from openft.store.queries import webhooks as queries
from openft.store.queries.reads import Db
from openft.store.tables import WebhookEndpoint as EndpointRow

KEEP_OLD_SECRET = timedelta(hours=24)


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (the Standard Webhooks form)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def checked_url(settings: Settings, url: str) -> str:
    try:
        await anyio.to_thread.run_sync(lambda: check_url(url, allow_private=settings.webhooks_allow_private))
    except UnsafeURL as exc:
        raise InvalidRequest(f"Webhook URL {url!r} is refused: {exc}.", param="url", code="invalid_url") from exc
    return url


async def create(session: AsyncSession, settings: Settings, org_id: str,
                 body: WebhookEndpointCreate) -> WebhookEndpointWithSecret:
    now = datetime.now(UTC)
    row = EndpointRow(
        id=domain.new_id("webhook_endpoint"), org_id=org_id, name=body.name,
        url=await checked_url(settings, body.url), event_types=sorted(set(body.event_types)),
        secret=new_secret(), created_at=now, updated_at=now,
    )
    await queries.create_endpoint(session, row)
    return WebhookEndpointWithSecret(**to_wire(row).model_dump(), signing_secret=row.secret)


async def get(db: Db, org_id: str, endpoint_id: str) -> Any:
    row = await queries.read_endpoint(db, org_id, endpoint_id)
    if row is None:
        raise NotFound("webhook_endpoint", endpoint_id)
    return row


async def update(session: AsyncSession, settings: Settings, org_id: str, endpoint_id: str,
                 body: WebhookEndpointUpdate) -> WebhookEndpoint:
    row = await get(session, org_id, endpoint_id)
    values: dict[str, Any] = {}
    if body.url is not None and body.url != row.url:
        values["url"] = await checked_url(settings, body.url)
    if body.name is not None and body.name != row.name:
        values["name"] = body.name
    if body.event_types is not None and sorted(set(body.event_types)) != row.event_types:
        values["event_types"] = sorted(set(body.event_types))
    if values:
        values["updated_at"] = datetime.now(UTC)
        await queries.update_endpoint(session, org_id, endpoint_id, **values)
    return to_wire(await get(session, org_id, endpoint_id))


async def rotate_secret(session: AsyncSession, org_id: str, endpoint_id: str,
                        keep_old: bool) -> WebhookEndpointWithSecret:
    row = await get(session, org_id, endpoint_id)
    now = datetime.now(UTC)
    secret = new_secret()
    await queries.update_endpoint(
        session, org_id, endpoint_id, secret=secret, updated_at=now,
        previous_secret=row.secret if keep_old else None,
        previous_secret_expires_at=now + KEEP_OLD_SECRET if keep_old else None,
    )
    return WebhookEndpointWithSecret(**to_wire(await get(session, org_id, endpoint_id)).model_dump(),
                                     signing_secret=secret)


async def delete(session: AsyncSession, org_id: str, endpoint_id: str) -> DeletedWebhookEndpoint:
    if not await queries.delete_endpoint(session, org_id, endpoint_id):
        raise NotFound("webhook_endpoint", endpoint_id)
    return DeletedWebhookEndpoint(id=endpoint_id, deleted=True)


async def list_all(db: Db, org_id: str, *, after: str | None, limit: int) -> ListWebhookEndpointsResponse:
    page = await queries.list_endpoints(db, org_id, after=after, limit=limit)
    data = [to_wire(row) for row in page.items]
    return ListWebhookEndpointsResponse(data=data, first_id=data[0].id if data else None,
                                        last_id=data[-1].id if data else None, has_more=page.has_more)


async def test(row: Any, settings: Settings, event_type: str) -> WebhookEndpointTestResult:
    """Send one sample event (``data.id`` names no real job) to the endpoint
    ``row`` now, signed like any other; the result has its HTTP status."""
    body = queries.event_body(domain.new_id("webhook_event"), event_type, datetime.now(UTC),
                              "ftjob-test")
    status, error = await post(settings, row.url, [row.secret], body)
    if status is None:
        raise InvalidRequest(f"The test delivery to {row.url} failed: {error}", param="url",
                             code="webhook_unreachable")
    return WebhookEndpointTestResult(event_type=event_type, status_code=status, webhook_endpoint_id=row.id)


def to_wire(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id, created_at=int(row.created_at.timestamp()), updated_at=int(row.updated_at.timestamp()),
        event_types=list(row.event_types), name=row.name, url=row.url,
        signing_secret_hint=f"whsec_...{row.secret[-4:]}",
    )
