"""``POST /fine_tuning/jobs/estimate`` (openft extension, through the SDK's
``post``): exact token counts and steps before a job runs, equal to what the
trained job reports; warnings; the same 400s as create; nothing created.
(The duration against a measured run of the bundled model is checked by the
README quick start test in test_e2e_smollm.py.)"""

from __future__ import annotations

import io
import json

import openai
import pytest

from support import Tenant, chat_file, jsonl, preference_example
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training


@pytest.fixture
def trainer(training_server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


def estimate(tenant: Tenant, **body) -> dict:
    return tenant.sdk.post("/fine_tuning/jobs/estimate", body=body, cast_to=object)


def upload(tenant: Tenant, content: bytes) -> str:
    return tenant.sdk.files.create(file=("d.jsonl", io.BytesIO(content)), purpose="fine-tune").id


@pytest.mark.parametrize("method", ["supervised", "dpo"])
def test_the_estimate_counts_what_the_job_trains(trainer: Tenant, method: str) -> None:
    content = chat_file(14) if method == "supervised" else jsonl([preference_example(i) for i in range(12)])
    body = {"model": TINY, "training_file": upload(trainer, content), "validation_file": upload(trainer, content),
            "method": {"type": method, method: {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}}}
    before = [j.id for j in trainer.sdk.fine_tuning.jobs.list(limit=100)]
    shown = estimate(trainer, **body)
    assert [j.id for j in trainer.sdk.fine_tuning.jobs.list(limit=100)] == before  # nothing created
    assert shown["object"] == "fine_tuning.job.estimate" and shown["model"] == TINY
    expected = (3, 6) if method == "dpo" else (4, 8)
    assert (shown["steps_per_epoch"], shown["total_steps"]) == expected
    assert shown["trained_tokens"] == 2 * shown["training_tokens"]
    assert shown["estimated_duration_seconds"] > 0 and shown["estimated_peak_memory_bytes"] > 0
    assert shown["calibration"]["train_tokens_per_second"] > 0
    assert [w["code"] for w in shown["warnings"]] == ["few_examples"]

    job = trainer.sdk.fine_tuning.jobs.create(**body)
    done = wait_for(trainer, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    assert done.trained_tokens == shown["trained_tokens"]
    resolved = getattr(done.method, method).hyperparameters.model_dump(exclude_none=True)
    assert {k: resolved[k] for k in shown["hyperparameters"]} == shown["hyperparameters"]
    assert shown["method"][method]["hyperparameters"] == shown["hyperparameters"]
    steps = [e.data for e in trainer.sdk.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert steps[0]["total_steps"] == shown["total_steps"]

    again = estimate(trainer, **body)  # the same shape: calibrated once, then only tokenized
    assert again["calibration"]["cached"] and not shown["calibration"]["cached"]
    assert again["trained_tokens"] == shown["trained_tokens"]


def test_truncation_and_long_examples_are_warned_and_counted(trainer: Tenant) -> None:
    lines = [json.loads(line) for line in chat_file(12).decode().splitlines()]
    lines[3]["messages"][-1]["content"] = "word " * 600
    training = upload(trainer, jsonl(lines))
    hyper = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64}
    shown = estimate(trainer, model=TINY, training_file=training,
                     method={"type": "supervised", "supervised": {"hyperparameters": hyper}})
    assert shown["truncated_lines"] == [4] and shown["longest_example_tokens"] == 64
    assert "truncated_examples" in [w["code"] for w in shown["warnings"]]
    assert "lines 4" in next(w["message"] for w in shown["warnings"] if w["code"] == "truncated_examples")
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=training,
                                              method={"type": "supervised", "supervised": {"hyperparameters": hyper}})
    assert wait_for(trainer, job.id, {"succeeded", "failed"}).trained_tokens == shown["trained_tokens"]


def test_the_estimate_refuses_what_create_refuses(trainer: Tenant) -> None:
    training = upload(trainer, chat_file(12))
    with pytest.raises(openai.BadRequestError) as bad:
        estimate(trainer, model="nobody/nothing", training_file=training)
    assert bad.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        estimate(trainer, model=TINY, training_file="file-missing")
    assert bad.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as bad:
        estimate(trainer, model=TINY, training_file=training,
                 method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}})
    assert bad.value.body["param"] == "method.supervised.hyperparameters.n_epochs"
