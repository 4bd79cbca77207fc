"""The Evals page in a real browser against a real training server: an eval
with a run on a fine-tune and a run on carried samples; the runs' pass rates
as the API counts them; a run's items filtered by status; the two runs side
by side, item by item, narrowed to the items whose verdicts differ; and the
job page listing the runs of its model and checkpoints (the job evaluated
its checkpoints as it trained), their pass rates on a chart."""

from __future__ import annotations

import io
import time

import pytest

from browser.conftest import new_tenant

from support import chat_file
from support import eval_run_finished as finished

pytestmark = [pytest.mark.browser, pytest.mark.training, pytest.mark.filterwarnings("ignore:The Evals API")]

TINY = "local/tiny"
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.expected}}", "operation": "eq"}
ROWS = [{"item": {"input": f"Question number {i}?", "expected": "yes"}} for i in range(4)]


def rate(run) -> str:  # type: ignore[no-untyped-def]
    c = run.result_counts
    graded = c.passed + c.failed + c.errored
    return f"{round(100 * c.passed / graded)}% ({c.passed}/{graded})"


def test_evals_runs_items_and_two_runs_side_by_side(training_server, dashboard) -> None:
    tenant = new_tenant(training_server, "evals")
    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    evaluation = tenant.sdk.evals.create(name="answers yes", testing_criteria=[EXACT], data_source_config={
        "type": "custom", "item_schema": {"type": "object", "required": ["input", "expected"]}})
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.input}}"}]}
    job = tenant.sdk.fine_tuning.jobs.create(  # its checkpoints are evaluated as it trains
        model=TINY, training_file=training,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        integrations=[{"type": "eval", "eval": {"eval_id": evaluation.id, "data_source": {  # type: ignore[list-item]
            "source": {"type": "file_content", "content": ROWS}, "input_messages": template,
            "sampling_params": {"temperature": 0, "max_completion_tokens": 4}}}}])
    carried = [{**row, "sample": {"output_text": "yes" if i % 2 else "no"}} for i, row in enumerate(ROWS)]
    samples = tenant.sdk.evals.runs.create(evaluation.id, name="carried samples", data_source={
        "type": "jsonl", "source": {"type": "file_content", "content": carried}})
    deadline = time.monotonic() + 120
    while (done := tenant.sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert done.status == "succeeded", done.error
    sampled = tenant.sdk.evals.runs.create(evaluation.id, name="fine-tune", data_source={
        "type": "completions", "model": done.fine_tuned_model, "source": {"type": "file_content", "content": ROWS},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.input}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 4}})
    runs = {"carried samples": finished(tenant, evaluation.id, samples.id),
            "fine-tune": finished(tenant, evaluation.id, sampled.id)}
    items = {name: {i.datasource_item_id: i.status for i in tenant.sdk.evals.runs.output_items.list(
        run.id, eval_id=evaluation.id)} for name, run in runs.items()}
    with tenant.http() as http:
        job_runs = http.get(f"/fine_tuning/jobs/{job.id}/eval_runs").json()["data"]
    of_checkpoints = [r for r in job_runs if r["id"] != sampled.id]
    assert of_checkpoints
    assert all(finished(tenant, evaluation.id, r["id"]).status == "completed" for r in of_checkpoints)

    tab = dashboard(training_server.url)
    page = tab.page
    tab.open()
    tab.sign_in(tenant.key, tenant.org)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Evals").click()
    tab.ready("/evals")
    page.get_by_role("link", name="answers yes").click()
    tab.ready(f"/evals/{evaluation.id}")
    for name, run in runs.items():
        row = page.locator(f'table.runs tr[data-run="{run.id}"]')
        assert row.locator("td.rate").inner_text() == rate(run)
        assert row.get_by_text(name).count() == 1
    tab.screenshot("runs")

    # One run's items, then only its failures.
    page.get_by_role("link", name="carried samples").click()
    page.locator("table.items tbody tr").first.wait_for()
    assert page.locator("table.items tbody tr").count() == 4
    page.get_by_label("Show").select_option("fail")
    page.wait_for_function("() => location.hash.includes('status=fail')")
    tab.ready(f"/evals/{evaluation.id}")
    failed = sum(1 for s in items["carried samples"].values() if s == "fail")
    page.wait_for_function("(n) => document.querySelectorAll('table.items tbody tr').length === n", arg=failed)
    assert page.locator("table.items tbody .badge.status-fail").count() == failed
    tab.screenshot("failed-items")

    # Side by side: every item, then only those whose verdicts differ.
    page.get_by_label("Select carried samples to compare").check()
    page.get_by_label("Select fine-tune to compare").check()
    page.get_by_role("button", name="Compare the two selected runs").click()
    tab.ready(f"/evals/{evaluation.id}/compare")
    assert page.locator("table.compare tbody tr").count() == 4
    summary = page.locator(".compare-summary").inner_text()
    assert rate(runs["fine-tune"]) in summary and rate(runs["carried samples"]) in summary
    page.get_by_label("Only items where the verdicts differ").check()
    differ = sum(1 for i in range(4) if items["carried samples"][i] != items["fine-tune"][i])
    assert page.locator("table.compare tbody tr").count() == differ
    tab.screenshot("side-by-side")

    # The job's page lists the runs of its model and checkpoints, and charts the checkpoints' pass rates.
    tab.open(f"#/jobs/{job.id}")
    tab.ready(f"/jobs/{job.id}")
    listed = page.locator("table.job-evals tbody tr")
    assert listed.count() == len(of_checkpoints) + 1
    assert rate(runs["fine-tune"]) in listed.filter(has_text="fine-tune").inner_text()
    line = page.locator('figure[data-chart="Eval pass rate"] polyline[data-series="eval_pass_rate"]')
    line.wait_for(state="attached")  # one point: drawn as a dot, the line itself has no length
    assert int(line.get_attribute("data-points")) == len(of_checkpoints)
    listed.get_by_role("link", name="fine-tune").click()
    tab.ready(f"/evals/{evaluation.id}")
    assert not tab.errors and not tab.unexpected_console() and not tab.foreign_requests()
    tab.screenshot("job-page-runs")
