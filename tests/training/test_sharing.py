"""Checkpoint permissions on a real server: a checkpoint shared with another
organisation is usable there as a model (chat, an eval run) and as the start
of a job, and nothing more (not an export, also not of a model trained from
it); no third organisation sees it; revoking the permission stops its use at
once."""

from __future__ import annotations

import io
import secrets
import time

import openai
import pytest
from test_chat import train_on

from support import Server, Tenant, assert_matches_schema, chat_file
from test_jobs_train import wait_for

pytestmark = [pytest.mark.training, pytest.mark.filterwarnings("ignore:The Evals API is deprecated")]

ASK = [{"role": "user", "content": "Say something."}]


def org_id(tenant: Tenant) -> str:
    with tenant.http() as http:
        return str(http.get("/me").json()["id"])


def new_tenant(server: Server, prefix: str) -> Tenant:
    name = f"{prefix}-{secrets.token_hex(3)}"
    return Tenant(server, name, server.new_key(name))


def chat(tenant: Tenant, model: str) -> str:
    answer = tenant.sdk.chat.completions.create(model=model, messages=ASK, max_completion_tokens=3, temperature=0)
    return answer.choices[0].message.content or ""


def test_a_shared_checkpoint_is_usable_by_the_organisation_it_names_and_no_other(training_server: Server) -> None:
    owner = Tenant(training_server, "default", training_server.api_key)
    tuned, checkpoint = train_on(owner, "apple")
    partner, stranger = new_tenant(training_server, "partner"), new_tenant(training_server, "stranger")
    [owner_job] = [j.id for j in owner.sdk.fine_tuning.jobs.list(limit=100) if j.fine_tuned_model == tuned]
    with pytest.raises(openai.NotFoundError):
        chat(partner, checkpoint)
    with pytest.raises(openai.NotFoundError):  # only the owner sees the permissions
        partner.sdk.fine_tuning.checkpoints.permissions.list(checkpoint)

    granted = owner.sdk.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[org_id(partner)])
    [permission] = granted.data
    assert permission.project_id == org_id(partner) and permission.object == "checkpoint.permission"
    with owner.http() as http:
        path = f"/fine_tuning/checkpoints/{checkpoint}/permissions"
        listed = http.get(path)
        assert listed.status_code == 200, listed.text
        assert_matches_schema(listed.json(), "ListFineTuningCheckpointPermissionResponse", evals=True)
        assert [p["id"] for p in listed.json()["data"]] == [permission.id]
        assert http.get(path, params={"project_id": org_id(stranger)}).json()["data"] == []
        again = http.post(path, json={"project_ids": [org_id(partner)]}).json()  # granting twice keeps one
        assert [p["id"] for p in again["data"]] == [permission.id]
        assert http.post(path, json={"project_ids": ["org-nope"]}).json()["error"]["param"] == "project_ids.0"

    assert "apple" in chat(partner, checkpoint)
    evaluation = partner.sdk.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
                           "reference": "x", "operation": "eq"}])
    run = partner.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        "type": "completions", "model": checkpoint, "source": {"type": "file_content", "content": [{"item": {}}]},
        "input_messages": {"type": "template", "template": ASK}})
    assert run.model == checkpoint
    deadline = time.monotonic() + 120  # a worker resolves the shared weights for the partner's run
    while (done := partner.sdk.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in ("queued",
                                                                                             "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert done.status == "completed" and done.result_counts.total == 1, done.error
    training = partner.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    job = partner.sdk.fine_tuning.jobs.create(model=checkpoint, training_file=training, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    continued = wait_for(partner, job.id, {"succeeded", "failed"})
    assert continued.status == "succeeded", continued.error
    assert continued.fine_tuned_model.split(":")[2] == partner.org  # the partner's own model

    for call in (lambda: stranger.sdk.chat.completions.create(model=checkpoint, messages=ASK),
                 lambda: partner.sdk.chat.completions.create(model=tuned, messages=ASK),  # the job's model: no
                 lambda: partner.sdk.fine_tuning.jobs.retrieve(owner_job),
                 lambda: partner.sdk.models.retrieve(tuned)):
        with pytest.raises(openai.NotFoundError):
            call()
    with partner.http() as http:  # use is not a copy: no export, also not of what was trained from it
        assert http.get(f"/models/{checkpoint}/export").status_code == 404
        derived = http.get(f"/models/{continued.fine_tuned_model}/export")
        assert derived.status_code == 403 and derived.json()["error"]["code"] == "model_not_exportable"

    deleted = owner.sdk.fine_tuning.checkpoints.permissions.delete(permission.id,
                                                                  fine_tuned_model_checkpoint=checkpoint)
    assert deleted.deleted and deleted.id == permission.id
    with pytest.raises(openai.NotFoundError):
        chat(partner, checkpoint)
    with pytest.raises(openai.NotFoundError):  # as for any model the organisation does not have
        partner.sdk.fine_tuning.jobs.create(model=checkpoint, training_file=training)
