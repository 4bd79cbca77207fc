"""The whole story in a real browser against a real training server: sign
in; a bad file's line number; a good upload; create a job; its loss chart
gains points while it trains; pause and resume; it succeeds; a checkpoint in
the playground; base and fine-tuned side by side; the 409 of deleting a file
in use; cancel another job; sign out. Each step asserts what a person sees
and saves a screenshot to build/screenshots/."""

from __future__ import annotations

import io

import pytest

from browser.conftest import new_tenant

from support import chat_example, chat_file, jsonl

pytestmark = [pytest.mark.browser, pytest.mark.training]

TINY = "local/tiny"
EXAMPLES = 16
EPOCHS = 6  # 96 steps of one example: long enough to watch, pause and resume
PROMPT = "Question number 3?"
MAX_TOKENS = 8


def points(tab, series: str = "train_loss") -> int:
    line = tab.page.locator(f'figure[data-chart="Loss"] polyline[data-series="{series}"]')
    return int(line.get_attribute("data-points")) if line.count() else 0


def wait_for_points(tab, more_than: int) -> int:
    tab.page.wait_for_function(
        """(n) => { const l = document.querySelector('figure[data-chart="Loss"] polyline[data-series="train_loss"]');
                   return l && Number(l.dataset.points) > n; }""", arg=more_than, timeout=60_000)
    return points(tab)


def badge(tab, status: str) -> None:
    tab.page.locator(f".page-head .badge.status-{status}").wait_for(timeout=120_000)


def confirm(tab, button: str) -> None:
    tab.page.get_by_role("group", name="Job actions").get_by_role("button", name=button, exact=True).click()
    dialog = tab.page.locator("dialog#confirm")
    dialog.wait_for()
    dialog.locator("#confirm-ok").click()


def answer(tenant, model: str) -> str:
    done = tenant.sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=MAX_TOKENS)
    return done.choices[0].message.content


def test_the_whole_story(training_server, dashboard) -> None:
    tenant = new_tenant(training_server, "story")
    tab = dashboard(training_server.url)
    page = tab.page

    # Sign in: the organisation is shown, and there are no jobs yet.
    tab.open()
    page.get_by_role("heading", name="Sign in to openft").wait_for()
    page.get_by_label("API key").fill("sk-openft-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").get_by_text("was not accepted (401)").wait_for()
    tab.sign_in(tenant.key, tenant.org)
    page.get_by_text("No jobs yet.").wait_for()
    assert page.evaluate("Object.keys(sessionStorage)") == ["openft.apiKey", "openft.org"] or set(
        page.evaluate("Object.keys(sessionStorage)")) == {"openft.apiKey", "openft.org"}
    assert page.evaluate("document.cookie") == ""
    tab.screenshot("signed-in")

    # A bad file: the server's validation names the line, and nothing is created.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New job").click()
    tab.ready("/new")
    bad = jsonl([chat_example(0), chat_example(1)]) + b'{"messages": [{"role": "user"}]}\n'
    page.get_by_label("…or upload a JSONL file").set_input_files(
        {"name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": bad})
    alert = page.locator(".upload-notice [role=alert]")
    alert.wait_for()
    assert "bad.jsonl was not accepted" in alert.inner_text() and "Line 3:" in alert.inner_text()
    assert tenant.sdk.files.list().data == []
    tab.screenshot("bad-file-line-number")

    # A good file: uploaded with progress, then selected as the training file.
    page.get_by_label("…or upload a JSONL file").set_input_files(
        {"name": "good.jsonl", "mimeType": "application/jsonl", "buffer": chat_file(EXAMPLES)})
    page.get_by_text("is selected as the training file").wait_for()
    (uploaded,) = tenant.sdk.files.list().data
    assert page.get_by_label("Training file").input_value() == uploaded.id
    tab.screenshot("good-file")

    # Create a job: model, method, hyperparameters, extensions, suffix, seed, metadata.
    page.get_by_label("Validation file (optional)").select_option(uploaded.id)
    page.get_by_label("Base model").select_option(TINY)
    page.get_by_label("Epochs").fill(str(EPOCHS))
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("Learning rate multiplier").fill("10")
    page.get_by_text("openft extensions").click()
    page.get_by_label("LoRA rank").fill("4")
    page.get_by_label("Suffix").fill("story")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Metadata (key=value per line)").fill("team=search\nticket=ML-42")
    tab.screenshot("new-job-form")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    job = tenant.sdk.fine_tuning.jobs.retrieve(job_id)
    hp = job.method.supervised.hyperparameters
    assert (job.model, job.seed, job.user_provided_suffix, job.metadata) == (
        TINY, 7, "story", {"team": "search", "ticket": "ML-42"})
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier, hp.lora_rank) == (EPOCHS, 1, 10, 4)

    # It trains: the loss chart gains points while the page is open.
    first = wait_for_points(tab, 1)
    later = wait_for_points(tab, first)
    assert later > first
    assert page.get_by_text(f"of {EXAMPLES * EPOCHS}").count() == 1  # "step n of 96"
    tab.screenshot("training")

    # Pause (confirmed), then resume: the buttons follow the state.
    confirm(tab, "Pause")
    badge(tab, "paused")
    assert page.get_by_role("button", name="Resume").is_visible()
    assert page.get_by_role("button", name="Pause").count() == 0
    paused_at = points(tab)
    tab.screenshot("paused")
    confirm(tab, "Resume")
    page.locator(".page-head .badge:is(.status-queued, .status-running, .status-succeeded)").wait_for()
    tab.screenshot("resumed")

    # It succeeds: the chart holds every step, with checkpoints marked and listed.
    badge(tab, "succeeded")
    page.locator('figure[data-chart="Loss"] polyline[data-series="full_valid_loss"]').wait_for()
    assert points(tab) == EXAMPLES * EPOCHS > paused_at
    checkpoints = tenant.sdk.fine_tuning.jobs.checkpoints.list(job_id).data
    assert checkpoints and page.locator("table.checkpoints tbody tr").count() == len(checkpoints)
    assert page.locator('figure[data-chart="Loss"] line.mark').count() == len(checkpoints)
    assert page.locator('figure[data-chart="Token accuracy"] polyline').count() >= 1
    events = page.locator("ol.events li")
    assert events.filter(has_text="Fine-tuning job paused").count() == 1
    assert events.filter(has_text="The job has successfully completed").count() == 1
    job = tenant.sdk.fine_tuning.jobs.retrieve(job_id)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download results CSV").click()
    csv = open(download.value.path()).read().splitlines()
    assert csv[0].startswith("step,train_loss") and len(csv) == 1 + EXAMPLES * EPOCHS
    tab.screenshot("succeeded")

    # A checkpoint in the playground: "Try it" opens it, and it answers streamed.
    earliest = checkpoints[-1]
    page.get_by_role("link", name=f"Try the checkpoint at step {earliest.step_number} in the playground").click()
    tab.ready("/playground")
    assert page.get_by_label("Model", exact=True).input_value() == earliest.fine_tuned_model_checkpoint
    page.get_by_label("Max tokens").fill(str(MAX_TOKENS))
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_role("button", name="Send").click()
    reply = page.locator('[data-pane="0"] .message.assistant[data-done]')
    reply.wait_for()
    assert reply.inner_text() == answer(tenant, earliest.fine_tuned_model_checkpoint)
    assert reply.inner_text()
    tab.screenshot("checkpoint-in-playground")

    # Base and fine-tuned side by side on the same prompt, each its own model's answer.
    page.go_back()
    tab.ready(f"/jobs/{job_id}")
    page.get_by_role("link", name="Try in playground").click()
    tab.ready("/playground")
    assert page.get_by_label("Compare two models side by side").is_checked()
    assert page.get_by_label("Compare with").input_value() == TINY
    page.get_by_label("Max tokens").fill(str(MAX_TOKENS))
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_role("button", name="Send").click()
    left = page.locator('[data-pane="0"] .message.assistant[data-done]')
    right = page.locator('[data-pane="1"] .message.assistant[data-done]')
    left.wait_for()
    right.wait_for()
    assert left.get_attribute("data-model") == job.fine_tuned_model
    assert right.get_attribute("data-model") == TINY
    assert left.inner_text() == answer(tenant, job.fine_tuned_model)
    assert right.inner_text() == answer(tenant, TINY)
    tab.screenshot("compare-base-and-fine-tuned")

    # A job that fails: its page shows the error with the line it names.
    long = {"messages": [{"role": "user", "content": "hello " * 100}, {"role": "assistant", "content": "ok"}]}
    lines = jsonl([chat_example(i) for i in range(10)] + [long])
    broken = tenant.sdk.files.create(file=("long.jsonl", io.BytesIO(lines)),
                                     purpose="fine-tune").id
    failing = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=broken, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "max_seq_length": 64}}})
    tab.open(f"#/jobs/{failing.id}")
    tab.ready(f"/jobs/{failing.id}")
    badge(tab, "failed")
    error = page.locator('section[aria-labelledby="facts-h"] [role=alert]')
    assert "Line 11:" in error.inner_text() and "max_seq_length=64" in error.inner_text()
    tab.screenshot("failed-with-line")

    # Another job: its file cannot be deleted while it runs (the 409 is
    # explained), and cancelling it (confirmed) ends it.
    other = tenant.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=uploaded.id, suffix="other",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}})
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Files").click()
    tab.ready("/files")
    page.get_by_role("button", name="Delete good.jsonl").click()
    page.locator("dialog#confirm #confirm-ok").click()
    refusal = page.locator("main [role=alert]")
    refusal.wait_for()
    assert "409 Conflict" in refusal.inner_text() and "cancel the job or wait" in refusal.inner_text()
    assert page.locator(f'tr[data-file="{uploaded.id}"]').is_visible()
    tab.screenshot("file-in-use-409")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    tab.ready("/jobs")
    page.get_by_role("link", name=other.id).click()
    tab.ready(f"/jobs/{other.id}")
    confirm(tab, "Cancel")
    badge(tab, "cancelled")
    actions = page.get_by_role("group", name="Job actions")
    assert actions.get_by_role("button").count() == 0  # nothing left to pause, resume or cancel
    assert tenant.sdk.fine_tuning.jobs.retrieve(other.id).status == "cancelled"
    tab.screenshot("cancelled")

    # Sign out: the key is gone from the tab, and the pages ask for it again.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in to openft").wait_for()
    assert page.evaluate("sessionStorage.getItem('openft.apiKey')") is None
    tab.open("#/jobs")
    page.get_by_role("heading", name="Sign in to openft").wait_for()
    tab.screenshot("signed-out")

    assert tab.foreign_requests() == []
    # The browser notes the 401, 400 and 409 the story provoked; nothing else.
    assert tab.unexpected_console(allowed_statuses=(401, 400, 409)) == [] and tab.errors == []
    assert not [url for url in tab.requests if tenant.key in url]
