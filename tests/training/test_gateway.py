"""A job trained by an upstream openft through this one's gateway, as a
TrueFoundry or LiteLLM client drives it: the official SDK on ``/api/llm``
with ``x-tfy-provider-name``, then the ids without the header, chat with
the upstream's fine-tuned model as ``account/model`` (streamed, and with
curl), pause/resume/cancel of a running job; the same organisation's local
job trains beside it. The gateway is the session's training server, whose
providers file ``openft providers add`` edits while it runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support import Server, Tenant, chat_file, run_readme_python
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training

EAST = {"x-tfy-provider-name": "east"}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def routed(training_server: Server, make_training_server: Any) -> tuple[Tenant, openai.OpenAI, Server]:
    upstream: Server = make_training_server()
    key_file = Path(training_server.home) / "east.key"
    key_file.write_text(upstream.new_key("gw-upstream") + "\n")
    added = subprocess.run(
        [sys.executable, "-m", "openft", "providers", "add", "east", "--base-url", f"{upstream.url}/v1",
         "--api-key-file", str(key_file), "--org", "gw-team", "--org", "default", "--timeout", "30"],
        env=training_server.env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    tenant = Tenant(training_server, "gw-team", training_server.new_key("gw-team"))
    sdk = openai.OpenAI(base_url=f"{training_server.url}/api/llm", api_key=tenant.key, max_retries=0)
    return tenant, sdk, upstream


def greedy(client: openai.OpenAI, model: str, **extra: Any) -> str:
    reply = client.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=8, **extra)
    return reply.choices[0].message.content or ""


def test_an_upstream_job_trains_reports_and_answers_through_the_gateway(routed: Any) -> None:
    tenant, sdk, upstream = routed
    there = openai.OpenAI(base_url=f"{upstream.url}/v1", max_retries=0,
                          api_key=(Path(tenant.server.home) / "east.key").read_text().strip())
    training = sdk.files.create(file=("east.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune",
                                extra_headers=EAST)
    job = sdk.fine_tuning.jobs.create(model=TINY, training_file=training.id, suffix="east", seed=3,
                                      hyperparameters={"n_epochs": 2, "batch_size": 4}, extra_headers=EAST)
    local_file = sdk.files.create(file=("local.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune")
    local_job = sdk.fine_tuning.jobs.create(model=TINY, training_file=local_file.id, suffix="home", seed=3,
                                            hyperparameters={"n_epochs": 1, "batch_size": 4})

    seen_messages: list[str] = []
    deadline = time.monotonic() + 180
    while (current := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        seen_messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert time.monotonic() < deadline, current.status
        time.sleep(0.2)  # polling the job's state through the gateway, bounded by the deadline
    assert current.status == "succeeded", current.error
    assert current.fine_tuned_model == there.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert events[0] == "The job has successfully completed" and set(seen_messages) <= set(events)
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]

    model = current.fine_tuned_model
    neighbour = openai.OpenAI(base_url=f"{tenant.server.url}/v1", api_key=tenant.server.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # "east" is shared with the default organisation: not its job
        neighbour.fine_tuning.jobs.retrieve(job.id, extra_headers=EAST)
    with pytest.raises(openai.NotFoundError):  # nor its model
        greedy(neighbour, f"east/{model}")
    checkpoint = checkpoints[0].fine_tuned_model_checkpoint
    assert sdk.fine_tuning.checkpoints.permissions.list(checkpoint, extra_headers=EAST).data == []
    with pytest.raises(openai.NotFoundError):  # nor its checkpoints' permissions
        neighbour.fine_tuning.checkpoints.permissions.list(checkpoint, extra_headers=EAST)
    direct = greedy(there, model)
    assert greedy(sdk, f"east/{model}") == direct
    streamed = sdk.chat.completions.create(model=f"east/{checkpoints[0].fine_tuned_model_checkpoint}",
                                           messages=ASK, temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == direct
    curl = subprocess.run(
        ["curl", "-sS", "-N", "--max-time", "60", f"{tenant.server.url}/api/llm/chat/completions",
         "-H", f"Authorization: Bearer {tenant.key}", "-H", "Content-Type: application/json",
         "-d", json.dumps({"model": f"east/{model}", "messages": ASK, "temperature": 0, "max_tokens": 8,
                           "stream": True})], capture_output=True, text=True, timeout=90)
    lines = [line[6:] for line in curl.stdout.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    assert "".join(json.loads(x)["choices"][0]["delta"].get("content") or "" for x in lines[:-1]
                   if json.loads(x)["choices"]) == direct

    local = wait_for(tenant, local_job.id, {"succeeded", "failed", "cancelled"})
    assert local.status == "succeeded" and local.fine_tuned_model.startswith(f"ft:{TINY}:gw-team:home")
    assert greedy(sdk, local.fine_tuned_model)  # served here, not upstream
    with pytest.raises(openai.NotFoundError):
        there.fine_tuning.jobs.retrieve(local_job.id)
    assert [j.id for j in sdk.fine_tuning.jobs.list()] == [local_job.id]


def test_a_running_upstream_job_pauses_resumes_and_cancels_through_the_gateway(routed: Any) -> None:
    tenant, sdk, _ = routed
    training = sdk.files.create(file=("long.jsonl", io.BytesIO(chat_file(40))), purpose="fine-tune",
                                extra_headers=EAST)
    job = sdk.fine_tuning.jobs.create(model=TINY, training_file=training.id, extra_headers=EAST,
                                      hyperparameters={"n_epochs": 10, "batch_size": 1})

    def reaches(statuses: set[str]) -> str:  # the job's id, without the header, through the gateway
        return wait_for(tenant, job.id, statuses, timeout=120).status  # type: ignore[no-any-return]

    reaches({"running"})
    sdk.fine_tuning.jobs.pause(job.id)
    assert reaches({"paused"}) == "paused"
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    reaches({"running"})
    assert sdk.fine_tuning.jobs.cancel(job.id).status in ("cancelled", "running")
    assert reaches({"cancelled"}) == "cancelled"


def test_the_how_to_routes_a_job_and_chats_with_its_model(routed: Any) -> None:
    """docs/how-to/route-to-providers.md, its Python block as printed (the
    suite's tiny model stands for the bundled one), by the default organisation."""
    tenant, _, _ = routed
    stdout = run_readme_python(tenant.server, 'x-tfy-provider-name": "east"', timeout=300,
                               replace={"HuggingFaceTB/SmolLM2-135M-Instruct": TINY})
    status, model = stdout.splitlines()[0].split()
    assert status == "succeeded" and model.startswith(f"ft:{TINY}:gw-upstream:")


def test_a_client_that_leaves_stops_the_upstream_generation_at_once(routed: Any) -> None:
    tenant, _, upstream = routed
    key = (Path(tenant.server.home) / "east.key").read_text().strip()

    def upstream_engine() -> dict[str, int]:
        stats = httpx.get(f"{upstream.url}/v1/serving/stats", headers={"Authorization": f"Bearer {key}"}).json()
        [engine] = [s for name, s in stats["engines"].items() if name.startswith("tiny-model")]
        return engine  # type: ignore[no-any-return]

    def until(ready: Any) -> dict[str, int]:
        deadline = time.monotonic() + 30
        while not ready(stats := upstream_engine()):
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)  # polling the upstream's counters for a state, bounded by the deadline
        return stats

    long = {"model": f"east/{TINY}", "messages": ASK, "temperature": 1.0, "seed": 3, "max_tokens": 4096}
    headers = {"Authorization": f"Bearer {tenant.key}"}
    httpx.post(f"{tenant.server.url}/v1/chat/completions", headers=headers, timeout=60,
               json={**long, "max_tokens": 1}).raise_for_status()  # the upstream's model is loaded
    cancelled = upstream_engine()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):  # a plain answer the client stops waiting for
        httpx.post(f"{tenant.server.url}/v1/chat/completions", headers=headers, json=long, timeout=1.0)
    cancelled = until(lambda s: s["cancelled"] > cancelled and s["running"] == 0)["cancelled"]
    with httpx.stream("POST", f"{tenant.server.url}/api/llm/chat/completions", headers=headers,
                      json={**long, "stream": True}, timeout=60) as stream:  # a stream the client closes
        assert next(stream.iter_lines()).startswith("data: ")
    until(lambda s: s["cancelled"] > cancelled and s["running"] == 0)
