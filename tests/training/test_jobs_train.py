"""Jobs train for real through the API: a tiny model, the worker in the server."""

from __future__ import annotations

import csv
import io
import time

import pytest

from support import Tenant, assert_matches_schema, chat_file

pytestmark = pytest.mark.training

TINY = "local/tiny"


def wait_for(tenant: Tenant, job_id: str, statuses: set[str], timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = tenant.sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.1)  # polling the API for a state, bounded by the deadline
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s:\n{tenant.server.log()}")


@pytest.fixture
def trainer(storage_training_server) -> Tenant:
    """The default organisation of a training server, blobs local or on S3."""
    return Tenant(storage_training_server, "default", storage_training_server.api_key)


@pytest.fixture
def local_trainer(training_server) -> Tenant:
    """For what does not depend on where blobs live (validation, events): local blobs only."""
    return Tenant(training_server, "default", training_server.api_key)


def upload(tenant: Tenant, n: int = 12) -> str:
    return tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(n))), purpose="fine-tune").id


def test_job_trains_to_success_with_everything_reported(trainer: Tenant) -> None:
    training = upload(trainer)
    job = trainer.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=training, validation_file=upload(trainer, 4), suffix="demo",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
    )
    done = wait_for(trainer, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{TINY}:default:demo:{job.id[-8:]}"
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at is not None and done.estimated_finish is None
    assert done.hyperparameters.n_epochs == 3 and done.hyperparameters.batch_size == 4
    assert done.method.supervised.hyperparameters.learning_rate_multiplier == 1.0
    with trainer.http() as http:
        assert_matches_schema(http.get(f"/fine_tuning/jobs/{job.id}").json(), "FineTuningJob")
        events = http.get(f"/fine_tuning/jobs/{job.id}/events", params={"limit": 100}).json()
        assert_matches_schema(events, "ListFineTuningJobEventsResponse")
        checkpoints = http.get(f"/fine_tuning/jobs/{job.id}/checkpoints").json()
        assert_matches_schema(checkpoints, "ListFineTuningJobCheckpointsResponse")

    messages = [e["message"] for e in reversed(events["data"])]
    assert messages[:4] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {training}, {job.validation_file}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert messages[-2:] == [f"New fine-tuned model created: {done.fine_tuned_model}",
                             "The job has successfully completed"]
    metrics = [e for e in reversed(events["data"]) if e["type"] == "metrics"]
    assert [m["data"]["step"] for m in metrics] == list(range(1, 10))
    assert metrics[0]["message"].startswith("Step 1/9: training loss=")
    assert {"step", "total_steps", "train_loss", "train_mean_token_accuracy"} <= set(metrics[0]["data"])
    assert any("valid_loss" in m["data"] for m in metrics)

    assert [c["step_number"] for c in checkpoints["data"]] == [9, 6, 3]
    assert checkpoints["data"][0]["fine_tuned_model_checkpoint"] == f"{done.fine_tuned_model}:ckpt-step-9"
    assert "full_valid_loss" in checkpoints["data"][0]["metrics"]

    [results_id] = done.result_files
    results = trainer.sdk.files.retrieve(results_id)
    assert results.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(trainer.sdk.files.content(results_id).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert set(rows[0]) == {"step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"}
    assert done.fine_tuned_model in [m.id for m in trainer.sdk.models.list()]


def test_failing_job_reports_error_and_next_job_runs(local_trainer: Tenant, tmp_path) -> None:
    trainer = local_trainer
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    import subprocess  # noqa: E401
    import sys
    subprocess.run([sys.executable, "-m", "openft", "models", "add", "local/broken", str(broken)],
                   env=trainer.server.env, check=True, capture_output=True)
    bad = trainer.sdk.fine_tuning.jobs.create(model="local/broken", training_file=upload(trainer))
    good = trainer.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=upload(trainer),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    failed = wait_for(trainer, bad.id, {"succeeded", "failed", "cancelled"})
    assert failed.status == "failed"
    assert failed.error.code == "model_load_failed" and failed.error.param == "model"
    assert "local/broken" in failed.error.message
    assert wait_for(trainer, good.id, {"succeeded", "failed"}).status == "succeeded"


def test_only_the_last_three_checkpoints_are_kept(trainer: Tenant) -> None:
    job = trainer.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=upload(trainer),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 4}}})
    assert wait_for(trainer, job.id, {"succeeded", "failed"}).status == "succeeded"
    steps = [c.step_number for c in trainer.sdk.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps == [15, 12, 9]
    assert trainer.server.blob_names(f"jobs/{job.id}/checkpoints") == ["step-12", "step-15", "step-9"]
    assert trainer.server.blob_names(f"jobs/{job.id}/state") == []


def test_dpo_job_through_the_api(trainer: Tenant) -> None:
    from support import jsonl, preference_example

    prefs = trainer.sdk.files.create(
        file=("p.jsonl", io.BytesIO(jsonl([preference_example(i) for i in range(10)]))), purpose="fine-tune").id
    job = trainer.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=prefs,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "beta": 0.2}}})
    done = wait_for(trainer, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2
    assert done.method.dpo.hyperparameters.n_epochs == 1


def test_truncated_lines_are_reported(local_trainer: Tenant) -> None:
    trainer = local_trainer
    from support import chat_example, jsonl

    long = {"messages": [{"role": "user", "content": "hello " * 100}, {"role": "assistant", "content": "ok"}]}
    data = jsonl([chat_example(i) for i in range(10)] + [long])
    training = trainer.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
    job = trainer.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=training,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "max_seq_length": 64}}})
    assert wait_for(trainer, job.id, {"succeeded", "failed"}).status == "failed"  # line 11 loses its answer
    job = trainer.sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.error.code == "invalid_training_file" and "Line 11" in job.error.message
    long = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok " * 100}]}
    data = jsonl([chat_example(i) for i in range(10)] + [long])
    training = trainer.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
    job = trainer.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=training,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "max_seq_length": 64}}})
    assert wait_for(trainer, job.id, {"succeeded", "failed"}).status == "succeeded"
    events = trainer.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    [warn] = [e for e in events if e.level == "warn"]
    assert "truncated (lines 11)" in warn.message and warn.data == {"truncated_lines": [11]}


def test_max_concurrent_jobs_runs_jobs_side_by_side(make_training_server) -> None:
    server = make_training_server(OPENFT_MAX_CONCURRENT_JOBS="2")
    tenant = Tenant(server, "default", server.api_key)
    long = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 30, "batch_size": 4}}}
    jobs = [tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), method=long).id
            for _ in range(3)]
    deadline = time.monotonic() + 60
    while sorted(tenant.sdk.fine_tuning.jobs.retrieve(j).status for j in jobs) != ["queued", "running", "running"]:
        assert time.monotonic() < deadline, [tenant.sdk.fine_tuning.jobs.retrieve(j).status for j in jobs]
        time.sleep(0.05)
    for job_id in jobs:
        tenant.sdk.fine_tuning.jobs.cancel(job_id)
