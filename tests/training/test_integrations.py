"""Integrations that really log: a job with ``wandb`` (no API key on the
server: an offline run) and ``mlflow`` (the server's local MLflow store)
ends with every metrics step, the resolved hyperparameters, the validation
results and the fine-tuned model id in both; a tracker that fails warns in
the job's events and the job still succeeds."""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path

import pytest

from support import Tenant, chat_file, free_port
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training

WANDB = {"type": "wandb", "wandb": {"project": "openft-tests", "name": "tiny", "tags": ["ci"]}}
MLFLOW = {"type": "mlflow", "mlflow": {"experiment": "openft-tests", "run_name": "tiny", "tags": {"team": "ml"}}}


def wandb_records(path: Path):
    """The protobuf records of a W&B run file (a LevelDB-style log after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, parts = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts + payload if kind == 4 else payload)
            yield record
        elif kind in (2, 3):
            parts = payload if kind == 2 else parts + payload


def event_with(tenant: Tenant, job_id: str, prefix: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in tenant.sdk.fine_tuning.jobs.list_events(job_id, limit=100):
            if event.message.startswith(prefix):
                return event
        time.sleep(0.2)  # polling the API for an event, bounded by the deadline
    raise AssertionError(f"no event starting {prefix!r}:\n{tenant.server.log()}")


def test_wandb_offline_and_mlflow_runs_hold_the_whole_job(make_training_server) -> None:
    server = make_training_server(WANDB_API_KEY="")
    tenant = Tenant(server, "default", server.api_key)
    data = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=data, validation_file=data, integrations=[WANDB, MLFLOW],  # type: ignore[list-item]
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
    done = wait_for(tenant, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    steps = {e.data["step"]: e.data for e in tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=100)
             if e.type == "metrics"}
    assert sorted(steps) == list(range(1, 7))
    final_checkpoint = tenant.sdk.fine_tuning.jobs.checkpoints.list(job.id).data[0]

    offline = event_with(tenant, job.id, "Logging to Weights & Biases offline")
    run_dir = Path(offline.data["dir"])
    assert f"wandb sync {run_dir}" in offline.message and run_dir.is_relative_to(server.home / "wandb")
    mlflow_started = event_with(tenant, job.id, "Logging to MLflow experiment 'openft-tests'")

    # MLflow: the run is closed (FINISHED) once the logger is done.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{server.home / 'mlflow.db'}")
    run_id = mlflow_started.data["run_id"]
    deadline = time.monotonic() + 120
    while client.get_run(run_id).info.status != "FINISHED":
        assert time.monotonic() < deadline, client.get_run(run_id).info
        time.sleep(0.2)  # the logger closes its runs after the job ends
    run = client.get_run(run_id)
    assert run.info.run_name == "tiny" and run.data.tags["team"] == "ml" and run.data.tags["openft.job_id"] == job.id
    assert run.data.tags["fine_tuned_model"] == done.fine_tuned_model
    assert run.data.params["n_epochs"] == "2" and run.data.params["batch_size"] == "4"
    assert run.data.params["model"] == TINY and run.data.params["training_type"] == "lora"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}
    assert history == pytest.approx({s: d["train_loss"] for s, d in steps.items()})
    assert client.get_metric_history(run_id, "full_valid_loss")[-1].value == pytest.approx(
        final_checkpoint.metrics.full_valid_loss)

    # W&B: the offline run file has every step, the config and the summary.
    [path] = list(run_dir.glob("run-*.wandb"))
    deadline = time.monotonic() + 120
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path)):
        assert time.monotonic() < deadline
        time.sleep(0.2)  # the logger finishes the run after the job ends
    logged, config, summary, tags = {}, {}, {}, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            logged.setdefault(row["_step"], {}).update(row)
        elif kind == "config":
            config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "run":  # the run's start, with the configuration given to wandb.init
            tags = list(record.run.tags)
            config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.run.config.update})
    assert {s: r["train_loss"] for s, r in logged.items() if "train_loss" in r} == pytest.approx(
        {s: d["train_loss"] for s, d in steps.items()})
    assert any("full_valid_loss" in r for r in logged.values())
    assert config["n_epochs"] == 2 and config["model"] == TINY
    assert summary["fine_tuned_model"] == done.fine_tuned_model
    assert set(tags) == {"ci", job.id}


def test_a_failing_tracker_warns_and_the_job_succeeds(make_training_server) -> None:
    # An MLflow server that is not there (and no retries, to keep the test short).
    server = make_training_server(OPENFT_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
                                  MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    tenant = Tenant(server, "default", server.api_key)
    data = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=data, integrations=[MLFLOW],  # type: ignore[list-item]
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "succeeded"
    warning = event_with(tenant, job.id, "MLflow logging could not start")
    assert warning.level == "warn" and "the job trains without it" in warning.message
