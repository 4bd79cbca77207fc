"""Webhook endpoints and the delivery outbox.

:func:`enqueue` runs inside the transaction that moves a job to a terminal
status (``jobs.transition_job``), so an event is recorded exactly when the
job ends, and survives any crash after that commit. The dispatcher claims
due deliveries with a conditional UPDATE (pushing ``next_attempt_at`` past
its own attempt), so two dispatchers never send one delivery at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from openft import domain
from openft.store.queries.reads import Db, Page, keyset_page, row_columns, scoped
from openft.store.tables import WebhookDelivery, WebhookEndpoint

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


async def create_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    session.add(endpoint)
    await session.flush()


async def read_endpoint(db: Db, org_id: str, endpoint_id: str) -> Row[Any] | None:
    return (await db.execute(scoped(WebhookEndpoint, org_id=org_id, id=endpoint_id))).first()


async def list_endpoints(db: Db, org_id: str, *, after: str | None, limit: int) -> Page[Any]:
    return await keyset_page(db, scoped(WebhookEndpoint, org_id=org_id), WebhookEndpoint, after=after, limit=limit)


async def update_endpoint(session: AsyncSession, org_id: str, endpoint_id: str, **values: Any) -> bool:
    result = await session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id, WebhookEndpoint.id == endpoint_id)
        .values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount > 0


async def delete_endpoint(session: AsyncSession, org_id: str, endpoint_id: str) -> bool:
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    result = await session.execute(
        delete(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id, WebhookEndpoint.id == endpoint_id)
    )
    return result.rowcount > 0


def event_body(event_id: str, event_type: str, created_at: datetime, object_id: str) -> str:
    """OpenAI's webhook event: ``{"id", "object": "event", "created_at", "type", "data": {"id"}}``."""
    return json.dumps({"id": event_id, "object": "event", "created_at": int(created_at.timestamp()),
                       "type": event_type, "data": {"id": object_id}}, separators=(",", ":"))


async def enqueue(session: AsyncSession, org_id: str, event_type: str, object_id: str) -> int:
    """One delivery per endpoint of the organisation that listens to ``event_type``
    (the same event id for all of them); returns how many."""
    endpoints = (await session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(WebhookEndpoint.org_id == org_id)
    )).all()
    now = datetime.now(UTC)
    event_id = domain.new_id("webhook_event")
    body = event_body(event_id, event_type, now, object_id)
    targets = [e.id for e in endpoints if event_type in (e.event_types or [])]
    for endpoint_id in targets:
        session.add(WebhookDelivery(
            # A row per endpoint; the event's id is in the body (and the webhook-id header).
            id=domain.new_id("webhook_delivery"), endpoint_id=endpoint_id,
            event_type=event_type, body=body, status=PENDING, attempts=0, next_attempt_at=now, created_at=now,
        ))
    if targets:
        await session.flush()
    return len(targets)


async def due_deliveries(db: Db, now: datetime, limit: int) -> list[Row[Any]]:
    stmt = (
        select(*row_columns(WebhookDelivery), WebhookEndpoint.url, WebhookEndpoint.secret,
               WebhookEndpoint.previous_secret, WebhookEndpoint.previous_secret_expires_at)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    )
    return list((await db.execute(stmt)).all())


async def claim(session: AsyncSession, delivery_id: str, seen_attempts: int, hold: timedelta) -> bool:
    """Take a due delivery for one attempt (False: another dispatcher took it
    first; ``attempts`` is the row's version)."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
               WebhookDelivery.attempts == seen_attempts)
        .values(next_attempt_at=datetime.now(UTC) + hold, attempts=WebhookDelivery.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount > 0


async def record(session: AsyncSession, delivery_id: str, *, status: str, error: str | None,
                 next_attempt_at: datetime | None = None) -> None:
    values: dict[str, Any] = {"status": status, "last_error": error}
    if status == DELIVERED:
        values["delivered_at"] = datetime.now(UTC)
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    await session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
        .execution_options(synchronize_session=False)
    )
