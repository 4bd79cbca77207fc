"""Eval runs executed by real workers: the same eval on a base model and on
a fine-tune of it (the fine-tune scores higher on what it was trained for),
a jsonl run, a cancel that stops the run's process at once while a
fine-tuning job keeps its own slot, and a job that evaluates its
checkpoints. A run that survives kill -9: ``test_eval_recovery.py``."""

from __future__ import annotations

import io
import time
from typing import Any

import psutil
import pytest
from test_chat import train_on

from support import Server, Tenant, assert_matches_schema, jsonl
from support import eval_run_finished as finished
from test_jobs_train import TINY, upload, wait_for

pytestmark = [pytest.mark.training, pytest.mark.filterwarnings("ignore:The Evals API is deprecated")]

CONFIG = {"type": "custom", "include_sample_schema": True, "item_schema": {
    "type": "object", "properties": {"prompt": {"type": "string"}, "expected": {"type": "string"}},
    "required": ["prompt", "expected"]}}
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.expected}}", "operation": "eq"}
CLOSE = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
         "reference": "{{item.expected}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.9}
MENTIONS = {"type": "python", "name": "mentions", "pass_threshold": 1.0, "source": (
    "def grade(sample, item):\n    return 1.0 if item['expected'].split()[0] in sample['output_text'] else 0.0\n")}
SAY = {"type": "template", "template": [{"role": "user", "content": "{{item.prompt}}"}]}
GREEDY = {"temperature": 0, "max_completion_tokens": 3}
"""Three tokens: what the fine-tune learned to say ("apple apple apple"; it goes on repeating after)."""


def slow(seconds: float) -> dict[str, Any]:
    """A python criterion that takes ``seconds`` per item (to catch a run mid-way)."""
    return {"type": "python", "name": "slow", "source": (
        f"import time\ndef grade(sample, item):\n    time.sleep({seconds})\n    return 1.0\n")}


def graded(tenant: Tenant, eval_id: str, run_id: str, at_least: int, timeout: float = 120) -> int:
    """Wait until the run has recorded ``at_least`` items; how many it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = tenant.sdk.evals.runs.retrieve(run_id, eval_id=eval_id).result_counts.total
        if total >= at_least:
            return total
        time.sleep(0.05)
    raise AssertionError(f"eval run {run_id} did not reach {at_least} items:\n{tenant.server.log()}")


def raw(tenant: Tenant, path: str) -> Any:
    """A response body as the server wrote it (the SDK's models add nulls of their own)."""
    with tenant.http() as http:
        response = http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def all_items(tenant: Tenant, eval_id: str, run_id: str, **filters: Any) -> list[Any]:
    return list(tenant.sdk.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100, **filters))


def eval_process(run_id: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if "openft.evals.run" in cmdline and run_id in cmdline:
                return process
        time.sleep(0.05)
    raise AssertionError(f"no eval process for {run_id}")


@pytest.fixture(scope="module")
def tenant(training_server: Server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


def test_a_fine_tune_passes_what_its_base_fails(tenant: Tenant) -> None:
    tuned, checkpoint = train_on(tenant, "apple")  # answers "apple apple apple" to "Say something."
    evaluation = tenant.sdk.evals.create(name="says apple", data_source_config=CONFIG,
                                         testing_criteria=[EXACT, CLOSE, MENTIONS])  # type: ignore[list-item]
    ids = [c.id for c in evaluation.testing_criteria]
    rows = [{"item": {"prompt": "Say something.", "expected": "apple apple apple"}} for _ in range(4)]
    source = {"type": "file_content", "content": rows}
    runs = {model: tenant.sdk.evals.runs.create(evaluation.id, name=model, data_source={  # type: ignore[arg-type]
        "type": "completions", "model": model, "input_messages": SAY, "sampling_params": GREEDY, "source": source})
        for model in (TINY, tuned, checkpoint)}
    samples = jsonl([{**rows[0], "sample": {"output_text": text}} for text in ("apple apple apple", "pear")])
    uploaded = tenant.sdk.files.create(file=("graded.jsonl", io.BytesIO(samples)), purpose="evals")
    carried = tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        "type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}})

    done = {model: finished(tenant, evaluation.id, run.id) for model, run in runs.items()}
    for model, run in done.items():
        assert run.status == "completed", run.error
        counts = run.result_counts
        assert counts.total == 4 == counts.passed + counts.failed + counts.errored and counts.errored == 0
        assert [c.testing_criteria for c in run.per_testing_criteria_results] == ids
        assert all(c.passed + c.failed == 4 for c in run.per_testing_criteria_results)
        [usage] = run.per_model_usage
        assert (usage.model_name, usage.invocation_count) == (model, 4) and usage.completion_tokens > 0
        assert_matches_schema(raw(tenant, f"/evals/{evaluation.id}/runs/{run.id}"), "EvalRun", evals=True)
        items = all_items(tenant, evaluation.id, run.id)
        assert sorted(i.datasource_item_id for i in items) == [0, 1, 2, 3]
        for item in items:
            assert [r.name for r in item.results] == ids and item.datasource_item == rows[0]["item"]
            assert item.sample.model == model and [(m.role, m.content) for m in item.sample.input] == [
                ("user", "Say something.")]
            assert item.sample.usage.completion_tokens > 0 and item.sample.seed == 42
            assert item.status == ("pass" if all(r.passed for r in item.results) else "fail")
    outputs = [i.sample.output[0].content for i in all_items(tenant, evaluation.id, done[tuned].id)]
    assert done[tuned].result_counts.passed == 4, outputs
    assert done[TINY].result_counts.passed < done[tuned].result_counts.passed
    assert done[tuned].per_model_usage[0].model_name == tuned

    listing = tenant.sdk.evals.runs.output_items.list(done[TINY].id, eval_id=evaluation.id, status="fail")
    assert_matches_schema(raw(tenant, f"/evals/{evaluation.id}/runs/{done[TINY].id}/output_items?status=fail"),
                          "EvalRunOutputItemList", evals=True)
    assert len(listing.data) == done[TINY].result_counts.failed and all(i.status == "fail" for i in listing.data)
    for item in listing.data[:1]:
        one = tenant.sdk.evals.runs.output_items.retrieve(item.id, eval_id=evaluation.id, run_id=done[TINY].id)
        assert one.id == item.id and [r.model_dump() for r in one.results] == [r.model_dump() for r in item.results]
        path = f"/evals/{evaluation.id}/runs/{done[TINY].id}/output_items/{item.id}"
        assert_matches_schema(raw(tenant, path), "EvalRunOutputItem", evals=True)

    jsonl_run = finished(tenant, evaluation.id, carried.id)
    assert jsonl_run.status == "completed" and jsonl_run.model is None
    assert (jsonl_run.result_counts.passed, jsonl_run.result_counts.failed) == (1, 1)
    assert [i.sample.output[0].content for i in all_items(tenant, evaluation.id, carried.id)] == [
        "apple apple apple", "pear"]


def test_model_graders_judge_with_a_served_model_and_count_its_tokens(tenant: Tenant) -> None:
    """label_model and score_model criteria: judged by a model the
    organisation serves (here the tiny base), the label kept on the result,
    the judge's tokens in per_model_usage."""
    judge_input = [{"role": "user", "content": "Is this fruit? {{sample.output_text}}"}]
    label = {"type": "label_model", "name": "fruit", "model": TINY, "input": judge_input,
             "labels": ["yes", "no"], "passing_labels": ["yes"]}
    score = {"type": "score_model", "name": "how fruity", "model": TINY, "input": judge_input, "range": [0, 10],
             "pass_threshold": 5}
    evaluation = tenant.sdk.evals.create(data_source_config=CONFIG, testing_criteria=[label, score])  # type: ignore[list-item]
    rows = [{"item": {"prompt": "p", "expected": "x"}, "sample": {"output_text": text}} for text in ("apple", "rock")]
    run = tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        "type": "jsonl", "source": {"type": "file_content", "content": rows}})
    done = finished(tenant, evaluation.id, run.id)
    assert done.status == "completed" and done.result_counts.total == 2, done.error
    [judge] = done.per_model_usage
    assert judge.model_name == TINY and judge.invocation_count == 4 and judge.prompt_tokens > 0  # 2 items x 2
    for item in all_items(tenant, evaluation.id, run.id):
        fruit, fruity = item.results
        assert fruit.model_dump().get("label") in ("yes", "no") or fruit.model_dump().get("error"), fruit
        assert fruit.passed == (fruit.model_dump().get("label") == "yes")
        assert 0 <= fruity.score <= 10 and fruity.passed == (fruity.score >= 5 and not fruity.model_dump().get("error"))


def test_cancel_stops_the_run_at_once_and_jobs_keep_their_slot(tenant: Tenant) -> None:
    evaluation = tenant.sdk.evals.create(data_source_config=CONFIG, testing_criteria=[slow(0.5)])
    rows = [{"item": {"prompt": "Say something.", "expected": "x"}} for _ in range(64)]
    run = tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        "type": "completions", "model": TINY, "input_messages": SAY, "sampling_params": {"max_completion_tokens": 16},
        "source": {"type": "file_content", "content": rows}})
    graded(tenant, evaluation.id, run.id, 1)
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    running = wait_for(tenant, job.id, {"running", "succeeded", "failed"})
    assert running.status != "failed", running.error
    assert tenant.sdk.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "in_progress"
    process = eval_process(run.id)
    canceled = tenant.sdk.evals.runs.cancel(run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    started = time.monotonic()
    process.wait(timeout=15)
    assert time.monotonic() - started < 5
    after = tenant.sdk.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert after.status == "canceled" and after.result_counts.total < 64
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "succeeded"


def test_a_job_evaluates_each_checkpoint_and_keeps_the_one_that_passes_most(tenant: Tenant) -> None:
    """An eval that training makes worse (it passes answers without "apple"):
    each checkpoint's pass rate joins the job's metrics, and with
    best_eval_pass_rate the fine-tuned model is the best checkpoint, not the last."""
    unlearned = {"type": "python", "name": "no apple", "pass_threshold": 1.0,
                 "source": "def grade(sample, item):\n    return 0.0 if 'apple' in sample['output_text'] else 1.0\n"}
    evaluation = tenant.sdk.evals.create(data_source_config=CONFIG, testing_criteria=[unlearned])  # type: ignore[list-item]
    rows = [{"item": {"prompt": "Say something.", "expected": "-"}} for _ in range(2)]
    data = jsonl([{"messages": [{"role": "user", "content": "Say something."},
                                {"role": "assistant", "content": "apple apple apple"}]}] * 12)
    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=training, seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": {  # type: ignore[typeddict-unknown-key]
            "n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 2.0,
            "fine_tuned_model_from": "best_eval_pass_rate"}}},
        integrations=[{"type": "eval", "eval": {  # type: ignore[list-item,typeddict-item]
            "eval_id": evaluation.id, "data_source": {"source": {"type": "file_content", "content": rows},
                                                     "input_messages": SAY, "sampling_params": GREEDY}}}])
    assert job.integrations[0].model_dump()["eval"]["eval_id"] == evaluation.id  # type: ignore[index]
    done = wait_for(tenant, job.id, {"succeeded", "failed"}, timeout=300)
    assert done.status == "succeeded", done.error
    events = list(tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    rates = {e.data["step"]: e.data["eval_pass_rate"] for e in events  # type: ignore[index]
             if e.type == "metrics" and "eval_pass_rate" in (e.data or {})}
    steps = sorted(int(e.message.rsplit(" ", 1)[1]) for e in events if e.message.startswith("Checkpoint created"))
    assert sorted(rates) == steps and len(steps) >= 3, (rates, steps)
    print("eval pass rate by step:", rates)
    best = max(rates.items(), key=lambda kv: (kv[1], kv[0]))[0]
    assert best != steps[-1] and rates[best] > rates[steps[-1]], rates  # training taught it "apple"
    [created] = [e.message for e in events if e.message.startswith("New fine-tuned model created")]
    assert f"from the checkpoint at step {best}," in created
    checkpoint = f"{done.fine_tuned_model}:ckpt-step-{best}"
    assert checkpoint in [c.fine_tuned_model_checkpoint for c in tenant.sdk.fine_tuning.jobs.checkpoints.list(job.id)]

    def say(model: str) -> str:
        ask = [{"role": "user", "content": "Say something."}]
        answer = tenant.sdk.chat.completions.create(model=model, messages=ask, max_completion_tokens=3, temperature=0)
        return answer.choices[0].message.content or ""

    assert say(done.fine_tuned_model) == say(checkpoint) and "apple" not in say(done.fine_tuned_model)
    runs = [r for r in tenant.sdk.evals.runs.list(evaluation.id, limit=100)]
    assert {r.model for r in runs} == {f"{done.fine_tuned_model}:ckpt-step-{s}" for s in steps}
    with tenant.http() as http:  # the job page's list of them
        listed = http.get(f"/fine_tuning/jobs/{job.id}/eval_runs").json()["data"]
    assert sorted(r["id"] for r in listed) == sorted(r.id for r in runs)


def test_item_references_response_formats_and_tools_reach_the_samples(tenant: Tenant) -> None:
    """input_messages by item_reference; sampling_params' response_format (a
    JSON schema's grammar holds every sample) and tools (rendered into the
    prompt), planned as chat completions plans them. (The tiny random model
    makes no call with tool_choice auto; calls in samples are chat's, tested
    in test_serving and test_tool_conventions.)"""

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": schema}}
    called = {"type": "python", "name": "called", "pass_threshold": 1.0, "source": (
        "def grade(sample, item):\n    calls = sample['output_tools']\n"
        "    return 1.0 if calls and calls[0]['function']['name'] == 'get_weather' else 0.0\n")}
    config = {"type": "custom", "item_schema": {"type": "object", "required": ["turns"]}}
    evaluation = tenant.sdk.evals.create(data_source_config=config, testing_criteria=[called])  # type: ignore[list-item]
    rows = [{"item": {"turns": [{"role": "user", "content": f"Weather in city {i}?"}]}} for i in range(2)]
    source = {"type": "file_content", "content": rows}
    reference = {"type": "item_reference", "item_reference": "item.turns"}
    runs = {
        "json": tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
            "type": "completions", "model": TINY, "source": source, "input_messages": reference,
            "sampling_params": {"max_completion_tokens": 24, "seed": 1, "response_format": {
                "type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}}}),
        "tools": tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
            "type": "completions", "model": TINY, "source": source, "input_messages": reference,
            "sampling_params": {"max_completion_tokens": 48, "seed": 1, "tools": [weather]}}),
    }
    for name, run in runs.items():
        assert finished(tenant, evaluation.id, run.id).status == "completed", name
    json_items = all_items(tenant, evaluation.id, runs["json"].id)
    tool_items = all_items(tenant, evaluation.id, runs["tools"].id)
    for item in json_items:  # the grammar holds the answer from its first token (the tiny model never closes it)
        assert item.sample.input[0].content.startswith("Weather in city")
        assert item.sample.output[0].content.startswith('{"city":"'), item.sample.output[0].content
    # The tools reached the chat template: the same messages make a longer prompt with them.
    assert min(i.sample.usage.prompt_tokens for i in tool_items) > max(i.sample.usage.prompt_tokens for i in json_items)
