"""Webhook endpoints through the official SDK (``client.webhooks``): create
shows the secret once, list/retrieve/update/rotate/delete, organisations
are isolated, and non-public URLs are refused."""

from __future__ import annotations

import openai
import pytest

from support import Tenant

pytestmark = pytest.mark.api

PUBLIC = "https://8.8.8.8/hooks/openft"  # a public address, never called by these tests
EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]


def test_endpoint_lifecycle(tenant: Tenant, other_tenant: Tenant) -> None:
    hooks = tenant.sdk.webhooks
    created = hooks.create(event_types=EVENTS, name="ci", url=PUBLIC)
    assert created.signing_secret.startswith("whsec_") and created.object == "webhook_endpoint"
    assert created.signing_secret_hint == f"whsec_...{created.signing_secret[-4:]}"
    assert sorted(created.event_types) == sorted(EVENTS)

    shown = hooks.retrieve(created.id)
    assert shown.url == PUBLIC and not hasattr(shown, "signing_secret")  # shown once only
    assert [e.id for e in hooks.list()] == [created.id]

    updated = hooks.update(created.id, event_types=["fine_tuning.job.cancelled"], name="renamed")
    assert updated.event_types == ["fine_tuning.job.cancelled"] and updated.name == "renamed"
    rotated = hooks.rotate_secret(created.id, keep_old_secret_active_for_24_hours=True)
    assert rotated.signing_secret != created.signing_secret

    with pytest.raises(openai.NotFoundError):
        other_tenant.sdk.webhooks.retrieve(created.id)
    assert list(other_tenant.sdk.webhooks.list()) == []

    deleted = hooks.delete(created.id)
    assert deleted.deleted and deleted.object == "webhook_endpoint.deleted"
    with pytest.raises(openai.NotFoundError):
        hooks.retrieve(created.id)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data",
                                 "http://10.0.0.1/x", "ftp://8.8.8.8/x"])
def test_private_and_odd_urls_are_refused(tenant: Tenant, url: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        tenant.sdk.webhooks.create(event_types=EVENTS, name="x", url=url)
    assert bad.value.body["param"] == "url" and bad.value.body["code"] == "invalid_url"


def test_unknown_event_types_are_refused(tenant: Tenant) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        tenant.sdk.webhooks.create(event_types=["batch.completed"], name="x", url=PUBLIC)  # type: ignore[list-item]
    assert bad.value.body["param"].startswith("event_types")
    with pytest.raises(openai.BadRequestError):
        tenant.sdk.webhooks.create(event_types=[], name="x", url=PUBLIC)
