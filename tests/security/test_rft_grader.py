"""A hostile python grader inside a reinforcement fine-tuning job: the
training process grades in the same sandbox as the graders API, so the
grader finds none of the server's files, processes or network, a grader
that fails is a zero reward with its error counted, and the job trains on."""

from __future__ import annotations

import io

import pytest

from support import Server, Tenant, jsonl

pytestmark = [pytest.mark.security, pytest.mark.training]

HOSTILE = """
import os, signal, socket, sqlite3

def grade(sample, item):
    escaped = []
    for attempt in (lambda: open(item['db'], 'rb').read(1),
                    lambda: sqlite3.connect('file:' + item['db'] + '?mode=ro', uri=True).execute('select 1'),
                    lambda: os.listdir(item['home']),
                    lambda: os.kill(item['pid'], signal.SIGKILL),
                    lambda: socket.create_connection(('127.0.0.1', item['port']), timeout=1)):
        try:
            attempt()
            escaped.append(attempt)
        except Exception:
            pass
    if escaped:
        raise RuntimeError(f'ESCAPED {len(escaped)}')
    if item['i'] % 2:  # odd prompts: a grader that fails is a zero reward with an error counted
        return float(len(open('/etc/passwd').read()))
    return 1.0
"""


def test_a_hostile_grader_in_an_rft_job_is_contained_and_the_job_trains(training_server: Server) -> None:
    from test_jobs_train import TINY, wait_for  # noqa: PLC0415 -- the training tier's helpers

    tenant = Tenant(training_server, "default", training_server.api_key)
    assert training_server.process is not None
    host = {"db": str(training_server.home / "openft.db"), "home": str(training_server.home),
            "pid": training_server.process.pid, "port": training_server.port}
    lines = [{"messages": [{"role": "user", "content": f"Say hi {i}."}], "i": i, **host} for i in range(12)]
    training = tenant.sdk.files.create(file=("rl.jsonl", io.BytesIO(jsonl(lines))), purpose="fine-tune")
    validation = tenant.sdk.files.create(file=("valid.jsonl", io.BytesIO(jsonl(lines[:2]))), purpose="fine-tune")
    grader = {"type": "python", "name": "hostile", "source": HOSTILE}
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=training.id, validation_file=validation.id,
                                             method={
        "type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "max_completion_tokens": 4, "compute_multiplier": 0.25}}})
    done = wait_for(tenant, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    events = tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    rows = [e.data for e in events if e.type == "metrics"]
    # Each step grades 4 prompts x 2 completions; the odd prompts' graders fail (half of them
    # over the epoch), and every other completion earns 1.
    assert len(rows) == 3 and sum(r["grader_errors"] for r in rows) == 12, rows
    assert all(r["train_reward_mean"] == 1 - r["grader_errors"] / 8 for r in rows), rows
    assert training_server.process.poll() is None
