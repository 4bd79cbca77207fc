"""The Evals API on a real server (its worker off: runs stay queued here;
``tests/training/test_evals.py`` runs them): evals, runs and output items
through the official SDK and raw HTTP on both prefixes, objects checked
against OpenAI's evals spec, every mistake a 400 pointing into the request,
and one organisation's evals invisible to another."""

from __future__ import annotations

import io
import secrets

import openai
import pytest

from conftest import require
from support import Server, Tenant, assert_matches_schema, chat_file, jsonl

pytestmark = [pytest.mark.api, pytest.mark.filterwarnings("ignore:The Evals API is deprecated")]

SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"]}
CONFIG = {"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True}
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}
CLOSE = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8}
ITEMS = [{"item": {"question": f"q{i}", "answer": "yes"}, "sample": {"output_text": "yes"}} for i in range(3)]
JSONL = {"type": "jsonl", "source": {"type": "file_content", "content": ITEMS}}


def new_eval(tenant: Tenant, **extra: object):  # type: ignore[no-untyped-def]
    return tenant.sdk.evals.create(name="qa", data_source_config=CONFIG, testing_criteria=[EXACT, CLOSE],
                                   **extra)  # type: ignore[arg-type]


def error_of(call) -> dict:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value.body  # type: ignore[return-value]


def test_an_eval_is_created_read_updated_listed_and_deleted(tenant: Tenant) -> None:
    created = new_eval(tenant, metadata={"team": "search"})
    body = created.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert_matches_schema(body, "Eval", evals=True)
    assert created.id.startswith("eval_") and created.name == "qa" and created.metadata == {"team": "search"}
    assert created.data_source_config.schema_["required"] == ["item", "sample"]  # type: ignore[union-attr]
    criteria = created.testing_criteria
    assert [c.name for c in criteria] == ["exact", "close"]
    assert criteria[0].id.startswith("exact-") and criteria[1].pass_threshold == 0.8  # type: ignore[union-attr]
    assert tenant.sdk.evals.retrieve(created.id).testing_criteria[0].id == criteria[0].id

    updated = tenant.sdk.evals.update(created.id, name="qa v2", metadata={"team": "ranking"})
    assert updated.name == "qa v2" and updated.metadata == {"team": "ranking"}

    later = [new_eval(tenant).id for _ in range(2)]
    tenant.sdk.evals.update(later[0], name="touched last")
    listed = tenant.sdk.evals.list(limit=2)
    assert_matches_schema(listed.model_dump(mode="json", by_alias=True), "EvalList", evals=True)
    assert [e.id for e in listed.data] == [created.id, later[0]] and listed.has_more
    assert [e.id for e in tenant.sdk.evals.list(after=later[0])] == [later[1]]
    assert [e.id for e in tenant.sdk.evals.list(order="desc")] == [later[1], later[0], created.id]
    by_update = [e.id for e in tenant.sdk.evals.list(order="desc", order_by="updated_at")]
    assert by_update[0] == later[0]

    deleted = tenant.sdk.evals.delete(created.id)
    assert deleted.deleted and deleted.eval_id == created.id
    with pytest.raises(openai.NotFoundError):
        tenant.sdk.evals.retrieve(created.id)


@pytest.mark.stores("sqlite")
@pytest.mark.parametrize(("config", "criteria", "param", "code"), [
    ({"type": "stored_completions"}, [EXACT], "data_source_config.type", "unsupported_data_source"),
    ({"type": "logs"}, [EXACT], "data_source_config.type", "unsupported_data_source"),
    ({"type": "custom"}, [EXACT], "data_source_config.item_schema", "invalid_value"),
    ({"type": "custom", "item_schema": {"type": "nope"}}, [EXACT], "data_source_config.item_schema.type",
     "invalid_value"),
    (CONFIG, [], "testing_criteria", "invalid_value"),
    (CONFIG, [{**CLOSE, "pass_threshold": None}], "testing_criteria.0.pass_threshold", "invalid_grader"),
    (CONFIG, [{**EXACT, "pass_threshold": 0.5}], "testing_criteria.0.pass_threshold", "invalid_grader"),
    (CONFIG, [EXACT, {**EXACT, "name": "starts", "operation": "startswith"}], "testing_criteria.1.operation",
     "invalid_grader"),
    (CONFIG, [EXACT, EXACT], "testing_criteria.1.name", "invalid_grader"),
    (CONFIG, [{**EXACT, "input": "{{answer.text}}"}], "testing_criteria.0.input", "invalid_grader"),
    (CONFIG, [{"type": "multi", "name": "m", "graders": {"e": EXACT}, "calculate_output": "e"}],
     "testing_criteria.0.type", "invalid_grader"),
    (CONFIG, [{"type": "label_model", "name": "tone", "model": "no/such-model", "labels": ["a", "b"],
               "passing_labels": ["a"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}],
     "testing_criteria.0.model", "model_not_found"),
])
def test_a_bad_eval_is_a_400_pointing_into_it(tenant: Tenant, config: dict, criteria: list, param: str,
                                             code: str) -> None:
    body = error_of(lambda: tenant.sdk.evals.create(data_source_config=config, testing_criteria=criteria))
    assert (body["param"], body["code"]) == (param, code), body


@pytest.mark.stores("sqlite")
def test_a_python_criterion_is_parsed_in_the_sandbox(tenant: Tenant) -> None:
    require("sandbox")
    broken = {"type": "python", "name": "py", "source": "def grade(sample, item)\n    return 1\n"}
    body = error_of(lambda: tenant.sdk.evals.create(data_source_config=CONFIG, testing_criteria=[EXACT, broken]))
    assert body["param"] == "testing_criteria.1.source", body


def test_runs_are_queued_listed_canceled_and_deleted(tenant: Tenant) -> None:
    evaluation = new_eval(tenant)
    runs = [tenant.sdk.evals.runs.create(evaluation.id, data_source=JSONL, name=f"run {i}")  # type: ignore[arg-type]
            for i in range(3)]
    first = runs[0].model_dump(mode="json", by_alias=True)
    assert_matches_schema(first, "EvalRun", evals=True)
    assert first["status"] == "queued" and first["model"] is None and first["error"] is None
    assert first["result_counts"] == {"total": 0, "errored": 0, "failed": 0, "passed": 0}
    assert [c["testing_criteria"] for c in first["per_testing_criteria_results"]] == [
        c.id for c in evaluation.testing_criteria]
    assert first["report_url"].endswith(f"/#/evals/{evaluation.id}?run={runs[0].id}")
    assert first["data_source"]["source"]["content"] == ITEMS

    listed = tenant.sdk.evals.runs.list(evaluation.id, limit=2)
    assert_matches_schema(listed.model_dump(mode="json", by_alias=True), "EvalRunList", evals=True)
    assert [r.id for r in listed.data] == [runs[0].id, runs[1].id] and listed.has_more
    assert [r.id for r in tenant.sdk.evals.runs.list(evaluation.id, order="desc")][0] == runs[2].id

    canceled = tenant.sdk.evals.runs.cancel(runs[1].id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    assert [r.id for r in tenant.sdk.evals.runs.list(evaluation.id, status="canceled")] == [runs[1].id]
    with pytest.raises(openai.ConflictError):
        tenant.sdk.evals.runs.cancel(runs[1].id, eval_id=evaluation.id)

    items = tenant.sdk.evals.runs.output_items.list(runs[0].id, eval_id=evaluation.id)
    assert items.data == [] and not items.has_more
    deleted = tenant.sdk.evals.runs.delete(runs[0].id, eval_id=evaluation.id)
    assert deleted.deleted and deleted.run_id == runs[0].id
    with pytest.raises(openai.NotFoundError):
        tenant.sdk.evals.runs.retrieve(runs[0].id, eval_id=evaluation.id)
    tenant.sdk.evals.delete(evaluation.id)  # with its runs
    with pytest.raises(openai.NotFoundError):
        tenant.sdk.evals.runs.retrieve(runs[2].id, eval_id=evaluation.id)


@pytest.mark.stores("sqlite")
def test_bad_runs_are_400s_naming_the_item(tenant: Tenant) -> None:
    evaluation = new_eval(tenant)
    runs = tenant.sdk.evals.runs

    def refused(data_source: dict) -> dict:
        return error_of(lambda: runs.create(evaluation.id, data_source=data_source))  # type: ignore[arg-type]

    misfit = [ITEMS[0], {"item": {"question": "q1"}, "sample": {"output_text": "yes"}}]
    body = refused({"type": "jsonl", "source": {"type": "file_content", "content": misfit}})
    assert body["param"] == "data_source.source.content.1.item" and "'answer' is a required" in body["message"]
    unsampled = [{"item": {"question": "q", "answer": "a"}}]
    body = refused({"type": "jsonl", "source": {"type": "file_content", "content": unsampled}})
    assert body["param"] == "data_source.source.content.0.sample", body

    lines = [*ITEMS[:2], {"item": {"question": 3, "answer": "a"}, "sample": {"output_text": "a"}}]
    uploaded = tenant.sdk.files.create(file=("items.jsonl", io.BytesIO(jsonl(lines))), purpose="evals")
    body = refused({"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}})
    assert body["param"] == "data_source.source.id" and f"line 3 of {uploaded.id}" in body["message"], body
    body = refused({"type": "jsonl", "source": {"type": "file_id", "id": "file-nope"}})
    assert (body["param"], body["code"]) == ("data_source.source.id", "file_not_found")

    template = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
    completions = {"type": "completions", "model": "no/such-model", "input_messages": template,
                   "source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]}}
    assert (refused(completions)["param"], refused(completions)["code"]) == ("data_source.model", "model_not_found")
    for data_source, param in [
        ({"type": "responses", "source": JSONL["source"]}, "data_source.type"),
        ({"type": "jsonl", "source": {"type": "stored_completions"}}, "data_source.source.type"),
        ({"type": "jsonl", "source": JSONL["source"], "model": "x"}, "data_source.model"),
    ]:
        assert refused(data_source)["param"] == param


@pytest.mark.stores("sqlite")
def test_a_completions_run_is_checked_before_it_is_queued(training_server: Server) -> None:
    """The model must exist for the organisation, the template must fill in
    for every item, sampling parameters are checked as chat checks them."""
    tenant = Tenant(training_server, "default", training_server.api_key)
    evaluation = new_eval(tenant)
    template = {"type": "template", "template": [{"role": "developer", "content": "Answer."},
                                                 {"role": "user", "content": "{{item.question}}"}]}
    content = [{"item": {"question": "q", "answer": "a"}}]
    base = {"type": "completions", "model": "local/tiny", "input_messages": template,
            "source": {"type": "file_content", "content": content}}

    def refused(**change: object) -> dict:
        data_source = {**base, **change}
        return error_of(lambda: tenant.sdk.evals.runs.create(evaluation.id, data_source=data_source))  # type: ignore[arg-type]

    missing = {"type": "template", "template": [{"role": "user", "content": "{{item.nope}}"}]}
    body = refused(input_messages=missing)
    assert body["param"] == "data_source.source.content.0.item" and "item.nope" in body["message"], body
    sampled = {"type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]}
    assert refused(input_messages=sampled)["param"] == "data_source.input_messages.template.0.content"
    assert refused(input_messages={"type": "item_reference", "item_reference": "item.turns"})["param"] == \
        "data_source.source.content.0.item"
    assert refused(sampling_params={"temperature": 5})["param"] == "data_source.sampling_params.temperature"
    assert refused(sampling_params={"max_completion_tokens": 0})["param"] == \
        "data_source.sampling_params.max_completion_tokens"
    assert refused(sampling_params={"n": 2})["param"] == "data_source.sampling_params.n"
    run = tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        **base, "sampling_params": {"temperature": 0, "max_completion_tokens": 4, "seed": 7, "top_p": None}})
    assert run.model == "local/tiny" and run.name == "local/tiny"
    assert run.data_source.sampling_params.model_dump(exclude_none=True) == {  # type: ignore[union-attr]
        "temperature": 0, "max_completion_tokens": 4, "seed": 7}  # a null is its default, not stored
    tenant.sdk.evals.runs.cancel(run.id, eval_id=evaluation.id)


@pytest.mark.parametrize("prefix", ["/v1", "/api/llm"])
def test_both_prefixes_serve_evals(tenant: Tenant, prefix: str) -> None:
    with tenant.http(prefix) as http:
        created = http.post("/evals", json={"data_source_config": CONFIG, "testing_criteria": [EXACT]})
        assert created.status_code == 200, created.text
        eval_id = created.json()["id"]
        run = http.post(f"/evals/{eval_id}/runs", json={"data_source": JSONL})
        assert run.status_code == 200, run.text
        assert http.get(f"/evals/{eval_id}/runs/{run.json()['id']}").json()["status"] == "queued"
        assert http.post("/evals", json={"data_source_config": CONFIG, "testing_criteria": [EXACT],
                                         "colour": "blue"}).status_code == 400


def test_another_organisation_sees_none_of_it(tenant: Tenant, other_tenant: Tenant) -> None:
    evaluation = new_eval(tenant)
    run = tenant.sdk.evals.runs.create(evaluation.id, data_source=JSONL)  # type: ignore[arg-type]
    uploaded = tenant.sdk.files.create(file=("items.jsonl", io.BytesIO(jsonl(ITEMS))), purpose="evals")
    other = other_tenant.sdk
    assert evaluation.id not in [e.id for e in other.evals.list()]
    for call in (lambda: other.evals.retrieve(evaluation.id),
                 lambda: other.evals.update(evaluation.id, name="mine"),
                 lambda: other.evals.delete(evaluation.id),
                 lambda: other.evals.runs.list(evaluation.id),
                 lambda: other.evals.runs.create(evaluation.id, data_source=JSONL),  # type: ignore[arg-type]
                 lambda: other.evals.runs.retrieve(run.id, eval_id=evaluation.id),
                 lambda: other.evals.runs.cancel(run.id, eval_id=evaluation.id),
                 lambda: other.evals.runs.delete(run.id, eval_id=evaluation.id),
                 lambda: other.evals.runs.output_items.list(run.id, eval_id=evaluation.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    own = other.evals.create(data_source_config=CONFIG, testing_criteria=[EXACT])
    body = error_of(lambda: other.evals.runs.create(own.id, data_source={  # type: ignore[arg-type]
        "type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}}))
    assert body["code"] == "file_not_found"
    assert tenant.sdk.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "queued"


@pytest.mark.stores("sqlite")
def test_hostile_items_are_refused_quickly_and_nothing_is_queued(training_server: Server) -> None:
    """A backtracking pattern in the item schema, a template that multiplies
    an item past the size a run stores, and a sample on a completions item
    are 400s naming the item, answered at once."""
    import time

    tenant = Tenant(training_server, "default", training_server.api_key)
    evaluation = tenant.sdk.evals.create(testing_criteria=[EXACT], data_source_config={
        "type": "custom", "item_schema": {"type": "object", "properties": {"word": {"pattern": "^(a|aa)+$"}}}})
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.word}}" * 20_000}]}
    cases = [
        ({"type": "jsonl", "source": {"type": "file_content", "content": [
            {"item": {"word": "a" * 40 + "b"}, "sample": {"output_text": "x"}}]}}, "takes too long"),
        ({"type": "completions", "model": "local/tiny", "input_messages": template,
          "source": {"type": "file_content", "content": [{"item": {"word": "a" * 40}}]}}, "characters, more than"),
        ({"type": "completions", "model": "local/tiny", "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "{{item.word}}"}]},
          "source": {"type": "file_content", "content": [{"item": {"word": "a"}, "sample": {"output_text": "a"}}]}},
         "carry no 'sample'"),
    ]
    for data_source, says in cases:
        started = time.monotonic()
        body = error_of(lambda ds=data_source: tenant.sdk.evals.runs.create(  # type: ignore[misc]
            evaluation.id, data_source=ds))
        assert body["param"].startswith("data_source.source.content.0") and says in body["message"], body
        assert time.monotonic() - started < 5
    assert tenant.sdk.evals.runs.list(evaluation.id).data == []


@pytest.mark.filterwarnings("ignore:The Evals API is deprecated")
def test_run_metadata_cannot_write_into_a_job(training_server: Server) -> None:
    """A run's metadata is the client's: naming another organisation's job
    there adds nothing to that job (the link to a job is the server's own)."""
    import time

    owner = Tenant(training_server, "default", training_server.api_key)
    name = f"meddler-{secrets.token_hex(3)}"
    meddler = Tenant(training_server, name, training_server.new_key(name))
    training = owner.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    job = owner.sdk.fine_tuning.jobs.create(model="local/tiny", training_file=training)
    owner.sdk.fine_tuning.jobs.cancel(job.id)
    evaluation = meddler.sdk.evals.create(data_source_config=CONFIG, testing_criteria=[EXACT])
    run = meddler.sdk.evals.runs.create(evaluation.id, data_source=JSONL,  # type: ignore[arg-type]
                                        metadata={"fine_tuning_job": job.id, "step": "3"})
    deadline = time.monotonic() + 60
    while meddler.sdk.evals.runs.retrieve(run.id, eval_id=evaluation.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    events = owner.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert not [e for e in events if "eval" in e.message.lower()], [e.message for e in events]


@pytest.mark.stores("sqlite")
def test_a_jobs_eval_integration_is_checked_like_a_run(training_server: Server) -> None:
    tenant = Tenant(training_server, "default", training_server.api_key)
    evaluation = tenant.sdk.evals.create(data_source_config={"type": "custom", "item_schema": SCHEMA},
                                         testing_criteria=[EXACT])
    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
    good = {"source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]},
            "input_messages": template}

    def refused(data_source: dict, *, eval_id: str = evaluation.id) -> dict:
        integration = {"type": "eval", "eval": {"eval_id": eval_id, "data_source": data_source}}
        return error_of(lambda: tenant.sdk.fine_tuning.jobs.create(
            model="local/tiny", training_file=training, integrations=[integration]))  # type: ignore[list-item]

    assert refused(good, eval_id="eval_nope")["param"] == "integrations.0.eval.eval_id"
    assert refused({**good, "model": "local/tiny"})["param"] == "integrations.0.eval.data_source.model"
    misfit = {**good, "source": {"type": "file_content", "content": [{"item": {"question": 1}}]}}
    assert refused(misfit)["param"] == "integrations.0.eval.data_source.source.content.0.item"
    body = error_of(lambda: tenant.sdk.fine_tuning.jobs.create(
        model="local/tiny", training_file=training, method={"type": "supervised", "supervised": {
            "hyperparameters": {"fine_tuned_model_from": "best_eval_pass_rate"}}}))  # type: ignore[typeddict-item]
    assert (body["param"], body["code"]) == ("method.supervised.hyperparameters.fine_tuned_model_from", "missing_eval")
    assert all(j.training_file != training for j in tenant.sdk.fine_tuning.jobs.list(limit=100).data)


def test_items_with_nul_surrogates_and_deep_nesting_are_400s_naming_where(tenant: Tenant) -> None:
    """The worst of item text, inline and in a file, on both databases: a NUL
    (PostgreSQL's JSON refuses it), a lone surrogate (not Unicode text), bytes
    that are not UTF-8 and nesting deeper than the decoder takes: each a 400
    naming where, none a 500, nothing queued."""
    evaluation = tenant.sdk.evals.create(data_source_config={"type": "custom", "item_schema": {"type": "object"}},
                                         testing_criteria=[{**EXACT, "reference": "x"}])
    nul = {"item": {"question": "a\u0000b"}, "sample": {"output_text": "x"}}
    with tenant.http() as http:
        inline = http.post(f"/evals/{evaluation.id}/runs", json={"data_source": {
            "type": "jsonl", "source": {"type": "file_content", "content": [nul]}}})
        assert inline.status_code == 400, inline.text
        assert inline.json()["error"]["param"] == "data_source.source.content.0.item.question"
        named = http.post("/evals", json={"name": "a\u0000", "data_source_config": CONFIG, "testing_criteria": [EXACT]})
        assert (named.status_code, named.json()["error"]["param"]) == (400, "name")
        for line in (b'{"item": {"q": "\\u0000"}, "sample": {"output_text": "x"}}',
                     b'{"item": {"q": "\\ud800"}, "sample": {"output_text": "x"}}',
                     b'{"item": {"q": "\xff\xfe"}, "sample": {"output_text": "x"}}',
                     b'{"item": {"q": ' + b"[" * 5000 + b"]" * 5000 + b'}, "sample": {"output_text": "x"}}'):
            uploaded = tenant.sdk.files.create(file=("items.jsonl", io.BytesIO(line + b"\n")), purpose="evals")
            run = http.post(f"/evals/{evaluation.id}/runs", json={"data_source": {
                "type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}}})
            assert run.status_code == 400, (line[:40], run.text)
            assert run.json()["error"]["param"] == "data_source.source.id" and "line 1" in run.text
    assert tenant.sdk.evals.runs.list(evaluation.id).data == []
