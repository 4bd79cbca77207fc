"""Several replicas on one PostgreSQL database and one S3 store: two API
servers without a worker, and two standalone workers, one with the local
executor and one on the Ray cluster. Jobs created through either replica each
train exactly once, and every replica answers for every job."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from support import Server, Tenant
from test_jobs_train import TINY, upload, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.postgres, pytest.mark.training]

METHOD = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}


def test_two_replicas_and_two_workers_share_one_database_and_store(
    make_training_server, s3_storage, ray_cluster, tmp_path
) -> None:
    first = make_training_server("postgres", OPENFT_WORKER="false", OPENFT_EXECUTOR="ray", **s3_storage())
    second = Server(home=tmp_path / "replica", database_url=first.database_url, extra_env=first.extra_env).start()
    workers = []
    try:
        for executor in ("local", "ray"):
            home = tmp_path / f"worker-{executor}"
            home.mkdir()
            env = {**first.env, "OPENFT_HOME": str(home), "OPENFT_EXECUTOR": executor,
                   "OPENFT_RAY_ADDRESS": ray_cluster.address}
            workers.append(subprocess.Popen([sys.executable, "-m", "openft", "worker"], env=env,
                                            stdout=subprocess.DEVNULL, stderr=(home / "worker.log").open("wb")))
        replicas = [Tenant(server, "default", server.api_key) for server in (first, second)]
        jobs = {}
        for i, tenant in enumerate(replicas * 2):
            extra = {"resources": {"workers": 1, "cpus_per_worker": 1}} if i == 1 else None  # Ray only
            job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=upload(tenant), method=METHOD,
                                                     extra_body=extra)
            jobs[job.id] = extra
        ran_on = {}
        for job_id in jobs:
            done = wait_for(replicas[0], job_id, {"succeeded", "failed"}, timeout=400)
            assert done.status == "succeeded", (done.error, _logs(tmp_path))
            messages = [e.message for e in replicas[1].sdk.fine_tuning.jobs.list_events(job_id, limit=100)]
            assert messages.count("Fine-tuning job started") == 1
            ran_on[job_id] = "ray" if any(m.startswith("Training on Ray") for m in messages) else "local"
        assert ran_on[list(jobs)[1]] == "ray"
        assert set(ran_on.values()) == {"local", "ray"}, ran_on

        for tenant in replicas:
            for job_id in jobs:
                job = tenant.sdk.fine_tuning.jobs.retrieve(job_id)
                assert job.status == "succeeded"
                assert tenant.sdk.fine_tuning.jobs.checkpoints.list(job_id).data
                answer = tenant.sdk.chat.completions.create(
                    model=job.fine_tuned_model, messages=[{"role": "user", "content": "Question number 1?"}],
                    temperature=0, max_tokens=3,
                )
                assert answer.choices[0].message.content is not None
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        second.stop()


def _logs(tmp_path) -> str:  # noqa: ANN001
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("worker-*/worker.log"))
