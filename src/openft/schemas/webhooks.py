"""Wire models of webhook endpoints, as the OpenAI SDK's ``client.webhooks``
sends and reads them (``/webhook_endpoints``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from openft.schemas.common import RequestModel, WireModel

EventType = Literal["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
"""The events openft emits (a job that ends)."""

EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]
Name = Annotated[str, Field(min_length=1, max_length=256)]
Url = Annotated[str, Field(min_length=1, max_length=2048)]


class WebhookEndpointCreate(RequestModel):
    event_types: EventTypes
    name: Name
    url: Url


class WebhookEndpointUpdate(RequestModel):
    event_types: EventTypes | None = None
    name: Name | None = None
    url: Url | None = None


class WebhookRotateSecret(RequestModel):
    keep_old_secret_active_for_24_hours: bool = False


class WebhookTest(RequestModel):
    event_type: EventType


class WebhookEndpoint(WireModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    event_types: list[str]
    name: str
    url: str
    signing_secret_hint: str


class WebhookEndpointWithSecret(WebhookEndpoint):
    signing_secret: str
    """Shown when the endpoint is created and when its secret is rotated, never again."""


class ListWebhookEndpointsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedWebhookEndpoint(WireModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookEndpointTestResult(WireModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    event_type: str
    status_code: int
    success: Literal[True] = True
    webhook_endpoint_id: str
