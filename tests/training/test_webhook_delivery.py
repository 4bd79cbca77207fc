"""Webhook deliveries for real: a receiver started by the test gets each
terminal event of a job, signed so the official SDK verifies it, and an
event whose delivery was failing when the server was killed arrives after
the restart (the outbox is in the database)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from support import REPO, Tenant, chat_file
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training


class Receiver:
    """An HTTP endpoint on loopback that records every request and answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                status = receiver.status
                headers = {k.lower(): v for k, v in self.headers.items()} | {"x-test-path": self.path}
                with receiver.changed:
                    receiver.received.append((headers, body, status))
                    receiver.changed.notify_all()
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait(self, accept, timeout: float = 60) -> tuple[dict[str, str], bytes, int]:
        """The first request ``accept(headers, event, status)`` takes, waiting for it."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for headers, body, status in self.received:
                    if accept(headers, json.loads(body), status):
                        return headers, body, status
                left = deadline - time.monotonic()
                assert left > 0, f"no such delivery within {timeout}s; got {self.received}"
                self.changed.wait(left)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def hooked(make_training_server):
    """A training server that may call loopback, retries fast, and a receiver."""
    server = make_training_server(
        OPENFT_WEBHOOKS_ALLOW_PRIVATE="true", OPENFT_WEBHOOK_POLL_SECONDS="0.1",
        OPENFT_WEBHOOK_RETRY_BASE_SECONDS="0.2", OPENFT_WEBHOOK_RETRY_MAX_SECONDS="1",
        OPENFT_WEBHOOK_TIMEOUT_SECONDS="2",  # a kill mid-attempt holds the delivery 2 x 2 + 5 s
    )
    receiver = Receiver()
    yield Tenant(server, "default", server.api_key), receiver
    receiver.close()


def register(tenant: Tenant, url: str, *events: str) -> str:
    """``openft webhooks create`` as an operator runs it; returns the printed secret.
    (Each test registers its own paths: deliveries to other endpoints carry other signatures.)"""
    args = [sys.executable, "-m", "openft", "webhooks", "create", "--org", "default", "--url", url]
    if events:
        args += ["--events", ",".join(events)]
    result = subprocess.run(args, env=tenant.server.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "not shown again" in lines[0] and url in lines[0]
    return lines[-1]


def for_job(job_id: str, event_type: str, path: str = "/hook"):
    return lambda headers, event, status: (
        event["data"]["id"] == job_id and event["type"] == event_type and headers["x-test-path"] == path)


def verified(secret: str, headers: dict[str, str], body: bytes):
    return openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=secret)


def test_each_terminal_event_arrives_signed(hooked, tmp_path) -> None:
    tenant, receiver = hooked
    secret = register(tenant, receiver.url)
    only_failures = register(tenant, receiver.url.replace("/hook", "/failures"), "fine_tuning.job.failed")
    data = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id

    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=data, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "succeeded"
    headers, body, _ = receiver.wait(for_job(job.id, "fine_tuning.job.succeeded"))
    event = verified(secret, headers, body)
    assert (event.type, event.data.id, event.object) == ("fine_tuning.job.succeeded", job.id, "event")
    assert headers["webhook-id"] == event.id and event.id.startswith("evt_")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        verified(only_failures, headers, body)  # each endpoint has its own secret

    queued = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=data)
    tenant.sdk.fine_tuning.jobs.cancel(queued.id)
    headers, body, _ = receiver.wait(for_job(queued.id, "fine_tuning.job.cancelled"))
    assert verified(secret, headers, body).type == "fine_tuning.job.cancelled"

    failing = _failing_job(tenant, data, tmp_path)
    headers, body, _ = receiver.wait(for_job(failing, "fine_tuning.job.failed"))
    assert verified(secret, headers, body).type == "fine_tuning.job.failed"
    headers, body, _ = receiver.wait(for_job(failing, "fine_tuning.job.failed", "/failures"))
    assert verified(only_failures, headers, body).data.id == failing
    # The failures-only endpoint hears of failures and nothing else.
    assert {json.loads(b)["type"] for h, b, _ in receiver.received if h["x-test-path"] == "/failures"} == {
        "fine_tuning.job.failed"}


def _failing_job(tenant: Tenant, data: str, tmp_path) -> str:
    """A job that fails: its base model's folder is broken."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    subprocess.run([sys.executable, "-m", "openft", "models", "add", "local/broken", str(broken)],
                   env=tenant.server.env, check=True, capture_output=True)
    job = tenant.sdk.fine_tuning.jobs.create(model="local/broken", training_file=data)
    assert wait_for(tenant, job.id, {"succeeded", "failed"}).status == "failed"
    return job.id


def test_a_failing_delivery_survives_a_server_kill(hooked) -> None:
    tenant, receiver = hooked
    secret = register(tenant, receiver.url.replace("/hook", "/kill"))
    data = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id
    receiver.status = 503  # the receiver is down when the job ends
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=data)
    tenant.sdk.fine_tuning.jobs.cancel(job.id)
    def answered(status: int):
        return lambda h, e, s: h["x-test-path"] == "/kill" and e["data"]["id"] == job.id and s == status

    first, _, _ = receiver.wait(answered(503))

    tenant.server.process.kill()  # no graceful shutdown: only the database remembers
    tenant.server.process.wait()
    receiver.status = 200
    tenant.server.start()
    headers, body, _ = receiver.wait(answered(200))
    event = verified(secret, headers, body)
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == job.id
    assert headers["webhook-id"] == first["webhook-id"]  # the same event, retried
