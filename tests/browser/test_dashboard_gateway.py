"""The dashboard on a gateway: the jobs list shows a provider account's jobs
when the account is chosen (one made on the upstream itself, whose id the
gateway never saw), that job's page names the account it lives on, and its
actions reach the upstream. Both servers are API-only openft servers (the
job stays queued upstream)."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from browser.conftest import new_tenant

from support import SMOLLM, chat_file

pytestmark = pytest.mark.browser

EAST = {"x-tfy-provider-name": "east"}


def test_a_routed_job_is_listed_under_its_account_and_its_page_names_it(make_server, dashboard, tmp_path: Path) -> None:
    upstream = make_server("sqlite")
    with ThreadPoolExecutor(1) as pool:  # a key is made with an event loop of its own (see new_tenant)
        upstream_key = pool.submit(upstream.new_key, "east-team").result()
    providers = tmp_path / "providers.json"
    gateway = make_server("sqlite", OPENFT_PROVIDERS_FILE=str(providers), EAST_KEY=upstream_key)
    tenant = new_tenant(gateway, "routed")
    providers.write_text(json.dumps({"east": {
        "kind": "openai-compatible", "base_url": f"{upstream.url}/v1", "api_key_env": "EAST_KEY",
        "organizations": [tenant.org]}}))
    there = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key=upstream_key, max_retries=0)
    training = there.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune")
    # Made on the upstream itself: the gateway never saw its id, which the page must reach through the account.
    routed = there.fine_tuning.jobs.create(model=SMOLLM, training_file=training.id, suffix="east")
    local = tenant.sdk.fine_tuning.jobs.create(
        model=SMOLLM, suffix="home", training_file=tenant.sdk.files.create(
            file=("l.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id)

    tab = dashboard(gateway.url)
    page = tab.page
    tab.open()
    tab.sign_in(tenant.key, tenant.org)
    tab.ready("/jobs")
    jobs = page.locator("table.jobs")
    jobs.get_by_role("link", name=local.id).wait_for()
    assert jobs.get_by_role("link", name=routed.id).count() == 0  # this deployment's jobs first

    page.get_by_label("Provider account").select_option("east")
    page.get_by_role("button", name="Apply").click()
    jobs.get_by_role("link", name=routed.id).wait_for()
    assert jobs.get_by_role("link", name=local.id).count() == 0
    tab.screenshot("listed-under-east")

    jobs.get_by_role("link", name=routed.id).click()
    page.locator(".page-head .badge.status-queued").wait_for()
    facts = page.locator("dl")
    assert facts.get_by_text("Provider account").count() == 1 and facts.locator("code", has_text="east").count() == 1
    page.get_by_role("group", name="Job actions").get_by_role("button", name="Pause", exact=True).click()
    page.locator("dialog#confirm #confirm-ok").click()
    page.locator(".page-head .badge.status-paused").wait_for()
    tab.screenshot("paused-upstream")
    assert there.fine_tuning.jobs.retrieve(routed.id).status == "paused"

    page.goto(f"{gateway.url}/#/jobs/{local.id}")
    page.locator(".page-head .badge.status-queued").wait_for()
    assert page.locator("dl").get_by_text("Provider account").count() == 0
    assert tab.errors == [] and tab.unexpected_console() == [] and tab.foreign_requests() == []
