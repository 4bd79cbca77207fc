"""Stopping and recovering real training processes: cancel and pause within
5 s, kill -9 of a training process, a kill during a checkpoint save, and two
workers on one PostgreSQL database."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from support import Server, Tenant
from test_jobs_train import TINY, upload, wait_for

pytestmark = pytest.mark.training

LONG = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 4}}}
"""For jobs stopped early (cancel): 60 steps, far more than they ever reach."""
RUN = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 4}}}
"""For jobs interrupted and then finished: 24 steps (checkpoints every 3)."""


def training_process(job_id: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if "openft.training.run" in cmdline and job_id in cmdline:
                return process
        time.sleep(0.05)
    raise AssertionError(f"no training process for {job_id}")


def wait_for_event(tenant: Tenant, job_id: str, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in e.message for e in tenant.sdk.fine_tuning.jobs.list_events(job_id, limit=100)):
            return
        time.sleep(0.05)
    raise AssertionError(f"event {text!r} not seen for {job_id}:\n{tenant.server.log()}")


def gone_within(process: psutil.Process) -> float:
    started = time.monotonic()
    try:
        process.wait(timeout=30)
    except psutil.TimeoutExpired:
        pass
    return time.monotonic() - started


def adapter(server: Server, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(server.home / "blobs" / "models" / job_id / "adapter_model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.fixture
def trainer(training_server: Server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


@pytest.fixture(scope="module")
def reference(training_server: Server) -> tuple[str, dict[str, torch.Tensor]]:
    """An uninterrupted run with seed 11 on 12 examples: the weights to match."""
    tenant = Tenant(training_server, "default", training_server.api_key)
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), seed=11, method=RUN)
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "succeeded"
    return job.id, adapter(training_server, job.id)


def test_cancel_stops_the_process_within_5_seconds(trainer: Tenant) -> None:
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(trainer), method=LONG)
    wait_for_event(trainer, job.id, "Step 2/")
    running = trainer.sdk.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish >= running.created_at  # kept current
    assert running.hyperparameters.n_epochs == 20 and running.hyperparameters.batch_size == 4
    process = training_process(job.id)
    assert trainer.sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert gone_within(process) < 5
    before = trainer.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert trainer.sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert trainer.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data == before


def test_pause_then_resume_matches_an_uninterrupted_run(trainer: Tenant, reference) -> None:
    _, expected = reference
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(trainer), seed=11, method=RUN)
    wait_for_event(trainer, job.id, "Step 8/")
    process = training_process(job.id)
    assert trainer.sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    assert gone_within(process) < 5
    wait_for_event(trainer, job.id, "Training state saved at step")
    assert trainer.sdk.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert trainer.sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    assert wait_for(trainer, job.id, {"succeeded", "failed"}).status == "succeeded"
    assert_same_weights(adapter(trainer.server, job.id), expected)


def test_kill_9_of_the_training_process_recovers_to_the_same_weights(trainer: Tenant, reference) -> None:
    reference_id, expected = reference
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(trainer), seed=11, method=RUN)
    wait_for_event(trainer, job.id, "Checkpoint created at step 6")
    training_process(job.id).send_signal(signal.SIGKILL)
    wait_for_event(trainer, job.id, "exited unexpectedly (signal 9)")
    done = wait_for(trainer, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded"
    assert_same_weights(adapter(trainer.server, job.id), expected)
    messages = [e.message for e in trainer.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert messages.count("Fine-tuning job started") == 2
    assert done.trained_tokens == trainer.sdk.fine_tuning.jobs.retrieve(reference_id).trained_tokens


def test_kill_during_a_checkpoint_save_resumes_from_the_previous_one(make_training_server) -> None:
    server = make_training_server(OPENFT_FAULT_STALL_SAVE="0.3")
    tenant = Tenant(server, "default", server.api_key)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}}
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), method=method)
    wait_for_event(tenant, job.id, "Checkpoint created at step 3")
    state = server.home / "blobs" / "jobs" / job.id / "state"
    deadline = time.monotonic() + 60
    while not any(".partial-" in p.name for p in state.iterdir()):  # the step-6 save is under way
        assert time.monotonic() < deadline
        time.sleep(0.02)
    training_process(job.id).send_signal(signal.SIGKILL)
    wait_for_event(tenant, job.id, "will resume from step 3")
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "succeeded"
    assert not any(".partial-" in p.name for p in (server.home / "blobs").rglob("*"))


def test_two_workers_on_postgres_never_run_a_job_twice(make_training_server, postgres_database, tiny_model_dir) -> None:
    server = make_training_server("postgres", OPENFT_WORKER="false")
    env = {**server.env, "OPENFT_WORKER": "true"}
    workers = [subprocess.Popen([sys.executable, "-m", "openft", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=(server.home / f"worker-{i}.log").open("wb"))
               for i in range(2)]
    try:
        tenant = Tenant(server, "default", server.api_key)
        method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}
        jobs = [tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), method=method).id
                for _ in range(4)]
        for job_id in jobs:
            assert wait_for(tenant, job_id, {"succeeded", "failed"}, timeout=300).status == "succeeded"
            messages = [e.message for e in tenant.sdk.fine_tuning.jobs.list_events(job_id, limit=100)]
            assert messages.count("Fine-tuning job started") == 1
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)


def test_a_dead_worker_loses_its_lease_and_the_job_resumes(make_training_server) -> None:
    server = make_training_server(OPENFT_LEASE_SECONDS="2")
    tenant = Tenant(server, "default", server.api_key)
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), method=RUN)
    wait_for_event(tenant, job.id, "Checkpoint created at step 3")
    child = training_process(job.id)
    server.process.send_signal(signal.SIGKILL)  # the whole worker (and API) dies
    server.process.wait()
    assert gone_within(child) < 5  # the training process does not outlive its worker
    server.start()
    wait_for_event(tenant, job.id, "its lease expired")
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "succeeded"
