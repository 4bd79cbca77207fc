"""The gateway role: files and fine-tuning routed to provider accounts with
``x-tfy-provider-name``, ids remembered per organisation, upstream errors as
a gateway gives them, accounts an organisation may not use, and a key that
never leaves the gateway. The upstream is a second real openft server (API
only: its jobs stay queued); training through the gateway is
tests/training/test_gateway.py."""

from __future__ import annotations

import http.server
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support import (
    SMOLLM,
    GeneratedJsonl,
    Server,
    Tenant,
    chat_file,
    download_sha256,
    free_port,
    rss_growth_during,
    wait_for_log,
)

pytestmark = pytest.mark.api

UPSTREAM_KEY_ENV = "EAST_UPSTREAM_KEY"


class Seen:
    """Every response the tests got from the gateway: status, headers and body."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def hook(self, response: httpx.Response) -> None:
        if "text/event-stream" not in response.headers.get("content-type", "") and \
                "octet-stream" not in response.headers.get("content-type", ""):
            response.read()
            self.texts.append(response.text)
        self.texts.append(json.dumps(dict(response.headers)))


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


@pytest.fixture(scope="module")
def upstream(make_server: Any) -> Server:
    return make_server("sqlite")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


class MockUpstream(http.server.ThreadingHTTPServer):
    """An upstream that misbehaves on purpose, one way per path: a redirect,
    a 429 with Retry-After, a plain-text 400 that echoes the gateway's key
    after 985 characters, an answer that trickles a byte every 0.3 s, JSON
    nested past any parser's depth."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), MockHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class MockHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        kind = self.path.split("?")[0].rsplit("/", 1)[-1]
        if kind == "files":  # a list, but not JSON
            self.answer(200, b"file-of-another-organisation", "text/plain")
        elif kind == "utf8":  # a header value in UTF-8 bytes
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self._headers_buffer.append('content-disposition: attachment; filename="训练.jsonl"\r\n'.encode())
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif kind == "redirect":
            self.answer(302, b"", location="http://attacker.invalid/steal")
        elif kind == "busy":
            self.answer(429, json.dumps({"error": {"message": "slow down", "type": "requests", "param": None,
                                                   "code": "rate_limit_exceeded"}}).encode(), retry_after="7")
        elif kind == "echo":
            self.answer(400, b"x" * 985 + self.headers["authorization"].encode(), "text/plain")
        elif kind == "trickle":
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.3)  # the misbehaviour under test: a byte at a time
        else:  # nested
            self.answer(200, b"[" * 100_000 + b"]" * 100_000)


@pytest.fixture(scope="module")
def mock_upstream() -> Iterator[MockUpstream]:
    mock = MockUpstream()
    yield mock
    mock.shutdown()


@pytest.fixture(scope="module")
def gateway(make_server: Any, upstream: Server, silent_port: int, mock_upstream: MockUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Server:
    upstream_key = upstream.new_key("east-team")
    # One upstream key per account on it: each is an organisation of its own upstream.
    keys = {"SHARED_UPSTREAM_KEY": upstream.new_key("shared-team"), "FAST_UPSTREAM_KEY": upstream.new_key("fast-team")}
    providers = Path(tmp_path_factory.mktemp("providers")) / "providers.json"
    env = {"OPENFT_PROVIDERS_FILE": str(providers), "OPENFT_LOG_LEVEL": "info", UPSTREAM_KEY_ENV: upstream_key,
           "WRONG_KEY": "sk-wrong-key-that-the-upstream-refuses", **keys}
    server: Server = make_server("sqlite", **env)
    for name, options in {
        "east": ["--base-url", f"{upstream.url}/v1", "--api-key-env", UPSTREAM_KEY_ENV, "--org", "research"],
        "down": ["--base-url", f"http://127.0.0.1:{free_port()}/v1", "--api-key-env", UPSTREAM_KEY_ENV,
                 "--org", "*", "--timeout", "2"],
        "silent": ["--base-url", f"http://127.0.0.1:{silent_port}/v1", "--api-key-env", UPSTREAM_KEY_ENV,
                   "--org", "*", "--timeout", "1"],
        "badkey": ["--base-url", f"{upstream.url}/v1", "--api-key-env", "WRONG_KEY", "--org", "*"],
        "local-alias": ["--kind", "openft", "--org", "research"],
        "shared": ["--base-url", f"{upstream.url}/v1", "--api-key-env", "SHARED_UPSTREAM_KEY", "--org", "research",
                   "--org", "outsider"],
        "east-fast": ["--base-url", f"{upstream.url}/v1", "--api-key-env", "FAST_UPSTREAM_KEY", "--org", "research",
                      "--timeout", "1"],
        "mock-shared": ["--base-url", f"{mock_upstream.url}/v1", "--api-key-env", "SHARED_UPSTREAM_KEY",
                        "--org", "research", "--org", "outsider"],
        "mock": ["--base-url", f"{mock_upstream.url}/v1", "--api-key-env", UPSTREAM_KEY_ENV, "--org", "research",
                 "--timeout", "1", "--deadline", "2"],
    }.items():
        added = subprocess.run([sys.executable, "-m", "openft", "providers", "add", name, *options],
                               env=server.env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
    server.extra_env["UPSTREAM_KEY"] = upstream_key  # for the tests' own searches, not the server's
    server.extra_env["OTHER_UPSTREAM_KEYS"] = " ".join(keys.values())
    return server


def tenant_of(server: Server, org: str, seen: Seen) -> tuple[Tenant, openai.OpenAI, httpx.Client]:
    tenant = Tenant(server, org, server.new_key(org))
    hooks = {"response": [seen.hook]}
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=tenant.key, max_retries=0,
                        http_client=httpx.Client(event_hooks=hooks, timeout=60))
    http = httpx.Client(base_url=f"{server.url}/api/llm", headers={"Authorization": f"Bearer {tenant.key}"},
                        event_hooks=hooks, timeout=60)
    return tenant, sdk, http


@pytest.fixture(scope="module")
def research(gateway: Server, seen: Seen) -> tuple[Tenant, openai.OpenAI, httpx.Client]:
    return tenant_of(gateway, "research", seen)


@pytest.fixture(scope="module")
def outsider(gateway: Server, seen: Seen) -> tuple[Tenant, openai.OpenAI, httpx.Client]:
    return tenant_of(gateway, "outsider", seen)


EAST = {"x-tfy-provider-name": "east"}


def upstream_sdk(upstream: Server, gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{upstream.url}/v1", api_key=gateway.extra_env["UPSTREAM_KEY"], max_retries=0)


def test_files_and_jobs_go_to_the_account_and_their_ids_work_without_the_header(
        research: Any, upstream: Server, gateway: Server) -> None:
    _, sdk, _ = research
    there = upstream_sdk(upstream, gateway)
    local_file = sdk.files.create(file=("local.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune")
    uploaded = sdk.files.create(file=("east.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune",
                                extra_headers=EAST)
    assert there.files.retrieve(uploaded.id).filename == "east.jsonl"  # it lives upstream
    assert sdk.files.retrieve(uploaded.id).filename == "east.jsonl"  # found again without the header
    assert sdk.files.content(uploaded.id).content == chat_file(12)
    assert [f.id for f in sdk.files.list()] == [local_file.id]  # lists without the header: this deployment's
    assert uploaded.id in [f.id for f in sdk.files.list(extra_headers=EAST)]

    job = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=uploaded.id, suffix="east",
                                      metadata={"team": "a"}, extra_headers=EAST)
    assert there.fine_tuning.jobs.retrieve(job.id).status == "queued"
    raw = sdk.fine_tuning.jobs.with_raw_response.retrieve(job.id)
    assert raw.headers["openft-provider-account"] == "east" and raw.parse().metadata == {"team": "a"}
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    assert there.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    assert [e.message for e in sdk.fine_tuning.jobs.list_events(job.id)] == \
        [e.message for e in there.fine_tuning.jobs.list_events(job.id)]
    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert job.id not in [j.id for j in sdk.fine_tuning.jobs.list()]
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list(extra_headers=EAST)]

    local_job = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=local_file.id)  # unaffected
    assert sdk.fine_tuning.jobs.retrieve(local_job.id).status == "queued"
    assert "openft-provider-account" not in sdk.fine_tuning.jobs.with_raw_response.retrieve(local_job.id).headers
    with pytest.raises(openai.NotFoundError):
        there.fine_tuning.jobs.retrieve(local_job.id)

    assert sdk.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        there.files.retrieve(uploaded.id)


def test_curl_on_the_gateway_prefix(research: Any, upstream: Server, tmp_path: Path) -> None:
    tenant, sdk, _ = research
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_file(12))
    base = f"{tenant.server.url}/api/llm"
    auth = ["-H", f"Authorization: Bearer {tenant.key}"]

    def curl(*args: str) -> Any:
        done = subprocess.run(["curl", "-sS", "--max-time", "30", *auth, *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    uploaded = curl(f"{base}/files", "-H", "x-tfy-provider-name: east", "-F", "purpose=fine-tune",
                    "-F", f"file=@{data}")
    job = curl(f"{base}/fine_tuning/jobs", "-H", "x-tfy-provider-name: east", "-H", "Content-Type: application/json",
               "-H", 'x-tfy-metadata: {"tfy_log_request": "true"}',
               "-d", json.dumps({"model": SMOLLM, "training_file": uploaded["id"]}))
    assert curl(f"{base}/fine_tuning/jobs/{job['id']}")["training_file"] == uploaded["id"]  # no header
    assert curl(f"{base}/fine_tuning/jobs/{job['id']}/events")["object"] == "list"
    assert curl(f"{base}/fine_tuning/jobs/{job['id']}/checkpoints")["data"] == []
    assert curl(f"{base}/fine_tuning/jobs/{job['id']}/cancel", "-X", "POST")["status"] == "cancelled"
    wait_for_log(tenant.server, 'metadata={"tfy_log_request": "true"}')  # recorded with the routed request
    there = upstream_sdk(upstream, tenant.server)  # and passed on: an openft upstream records it on the job
    created = list(there.fine_tuning.jobs.list_events(job["id"], limit=100))[-1]
    assert created.data == {"x_tfy_metadata": {"tfy_log_request": "true"}}
    assert job["id"] not in [j.id for j in sdk.fine_tuning.jobs.list()]


def test_upstream_client_errors_come_back_with_their_fields(research: Any) -> None:
    _, sdk, http = research
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model=SMOLLM, training_file="file-missing",
                                    hyperparameters={"n_epochs": 0}, extra_headers=EAST)
    assert bad.value.body["param"] == "hyperparameters.n_epochs" and bad.value.response.headers[
        "openft-provider-account"] == "east"
    missing = http.get("/fine_tuning/jobs/ftjob-nothere", headers=EAST)
    assert missing.status_code == 404
    assert missing.json()["error"] == {"message": "No such fine-tuning job: ftjob-nothere",
                                       "type": "invalid_request_error", "param": None,
                                       "code": "fine_tuning_job_not_found"}
    uploaded = sdk.files.create(file=("e.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune", extra_headers=EAST)
    job = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=uploaded.id, extra_headers=EAST)
    sdk.fine_tuning.jobs.cancel(job.id)
    conflict = http.post(f"/fine_tuning/jobs/{job.id}/pause")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"]
    traversal = http.get("/files/..%2F..%2Fmodels", headers=EAST)
    assert (traversal.status_code, traversal.json()["error"]["param"]) == (400, "path")


def test_an_account_an_organisation_may_not_use_is_a_404_and_an_unknown_one_a_400(
        research: Any, outsider: Any) -> None:
    _, sdk, http = research
    _, stranger, stranger_http = outsider
    mine = sdk.files.create(file=("m.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune", extra_headers=EAST)
    with pytest.raises(openai.NotFoundError) as hidden:
        stranger.files.list(extra_headers=EAST)
    assert hidden.value.body["code"] == "provider_account_not_found"
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(mine.id)  # another organisation's routed id is nothing to it
    unknown = stranger_http.get("/files", headers={"x-tfy-provider-name": "nowhere"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "x-tfy-provider-name"
    assert "east" not in unknown.json()["error"]["message"]  # not named to whom it is hidden
    assert [p["name"] for p in http.get("/me").json()["providers"]] == [
        "openft", "badkey", "down", "east", "east-fast", "local-alias", "mock", "mock-shared", "shared", "silent"]
    assert [p["name"] for p in stranger_http.get("/me").json()["providers"]] == [
        "openft", "badkey", "down", "mock-shared", "shared", "silent"]
    assert stranger_http.get("/files", headers={"x-tfy-provider-name": "local-alias"}).status_code == 404
    assert http.get("/files", headers={"x-tfy-provider-name": "local-alias"}).status_code == 200
    not_routed = http.get("/models", headers=EAST)
    assert not_routed.status_code == 400 and not_routed.json()["error"]["code"] == "provider_not_routable"


def test_an_upload_streams_through_in_flat_memory(research: Any, gateway: Server) -> None:
    tenant, _, _ = research
    big = GeneratedJsonl(64 * 1024 * 1024)
    response, growth = rss_growth_during(gateway.process.pid, lambda: httpx.post(
        f"{gateway.url}/v1/files", files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"}, timeout=300,
        headers={"Authorization": f"Bearer {tenant.key}", **EAST}))
    assert response.status_code == 200, response.text
    print(f"\nrouted upload of {big.size / 2**20:.0f} MiB: gateway RSS grew {growth / 2**20:.1f} MiB")
    assert growth < big.size / 2, f"gateway memory grew {growth / 2**20:.1f} MiB"
    assert download_sha256(f"{gateway.url}/v1/files/{response.json()['id']}/content", tenant.key) == \
        big.digest.hexdigest()


def test_an_unreachable_or_silent_account_is_a_502_or_504_within_its_timeout(research: Any) -> None:
    _, sdk, http = research
    # Bounds far from a hang (the client waits 60 s): the silent account's own timeout is 1 s.
    for name, status, code in (("down", 502, "provider_unreachable"), ("silent", 504, "provider_timeout"),
                               ("badkey", 502, "provider_auth_failed")):
        began = time.monotonic()
        answer = http.get("/fine_tuning/jobs", headers={"x-tfy-provider-name": name})
        took = time.monotonic() - began
        error = answer.json()["error"]
        assert (answer.status_code, error["code"], took < 20) == (status, code, True), (name, answer.text, took)
        assert f"'{name}'" in error["message"] and "127.0.0.1" not in error["message"]
        assert error["type"] == "server_error" and answer.headers["openft-provider-account"] == name
    assert "within 1 s" in http.get("/files", headers={"x-tfy-provider-name": "silent"}).json()["error"]["message"]
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as streamed:
        sdk.chat.completions.create(model="silent/some-model", messages=[{"role": "user", "content": "hi"}],
                                    stream=True)
    assert streamed.value.status_code == 504 and time.monotonic() - began < 20
    assert sdk.fine_tuning.jobs.list().object == "list"  # the local service is untouched


SHARED = {"x-tfy-provider-name": "shared"}


def test_on_a_shared_account_an_organisation_reaches_only_what_it_made_there(research: Any, outsider: Any) -> None:
    _, sdk, _ = research
    _, stranger, _ = outsider
    mine = sdk.files.create(file=("mine.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune", extra_headers=SHARED)
    job = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=mine.id, extra_headers=SHARED)
    assert sdk.files.retrieve(mine.id, extra_headers=SHARED).id == mine.id
    for attempt in (lambda: stranger.files.retrieve(mine.id, extra_headers=SHARED),
                    lambda: stranger.files.content(mine.id, extra_headers=SHARED),
                    lambda: stranger.fine_tuning.jobs.cancel(job.id, extra_headers=SHARED),
                    lambda: stranger.fine_tuning.jobs.list_events(job.id, extra_headers=SHARED),
                    lambda: stranger.fine_tuning.jobs.retrieve(job.id)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    theirs = stranger.files.create(file=("theirs.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune",
                                   extra_headers=SHARED)
    assert [f.id for f in stranger.files.list(extra_headers=SHARED)] == [theirs.id]  # one upstream, two views
    assert mine.id in [f.id for f in sdk.files.list(extra_headers=SHARED)]
    assert theirs.id not in [f.id for f in sdk.files.list(extra_headers=SHARED)]
    assert [j.id for j in sdk.fine_tuning.jobs.list(extra_headers=SHARED)] == [job.id]
    assert stranger.fine_tuning.jobs.list(extra_headers=SHARED).data == []
    with pytest.raises(openai.NotFoundError) as borrowed:
        stranger.fine_tuning.jobs.create(model=SMOLLM, training_file=mine.id, extra_headers=SHARED)
    assert borrowed.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError) as model:
        stranger.chat.completions.create(model=f"shared/ft:{SMOLLM}:research:x:abc",
                                         messages=[{"role": "user", "content": "hi"}])
    assert model.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as estimated:
        stranger.post("/fine_tuning/jobs/estimate", cast_to=object, body={"model": SMOLLM, "training_file": mine.id},
                      options={"headers": SHARED})
    assert estimated.value.body["param"] == "training_file"
    judged = {"type": "reinforcement", "reinforcement": {"grader": {
        "type": "score_model", "name": "judge", "model": f"ft:{SMOLLM}:research:judge:abc", "input": []}}}
    with pytest.raises(openai.NotFoundError) as judge:  # another's fine-tuned model, deep in a grader
        stranger.fine_tuning.jobs.create(model=SMOLLM, training_file=theirs.id, method=judged,  # type: ignore[arg-type]
                                         extra_headers=SHARED)
    assert judge.value.body["param"] == "method.reinforcement.grader.model"
    with pytest.raises(openai.BadRequestError) as evaluated:  # whose an eval is, the gateway cannot know
        stranger.fine_tuning.jobs.create(model=SMOLLM, training_file=theirs.id, extra_headers=SHARED,
                                         integrations=[{"type": "eval", "eval": {"eval_id": "eval-x"}}])  # type: ignore[list-item]
    assert evaluated.value.body["param"] == "integrations.0"
    with httpx.Client(base_url=str(stranger.base_url), headers={"Authorization": f"Bearer {stranger.api_key}"}) as raw:
        assert raw.post("fine_tuning/jobs", content=b"[1, 2]", headers=SHARED).status_code == 400
        assert raw.put(f"files/{theirs.id}", headers=SHARED).status_code == 405
        not_json = raw.get("files", headers={"x-tfy-provider-name": "mock-shared"})
        assert not_json.status_code == 502 and "another-organisation" not in not_json.text
    with pytest.raises(openai.BadRequestError) as unchecked:  # a route the gateway cannot narrow to its own
        stranger.fine_tuning.alpha.graders.validate(
            grader={"type": "string_check", "name": "g", "input": "a", "reference": "a", "operation": "eq"},
            extra_headers=SHARED)
    assert unchecked.value.body["code"] == "provider_not_routable"
    with httpx.Client(base_url=f"{stranger.base_url}", headers={"Authorization": f"Bearer {stranger.api_key}"}) as raw:
        page = raw.get("files", headers=SHARED).json()
    assert [f["id"] for f in page["data"]] == [theirs.id]
    assert (page["first_id"], page["last_id"]) == (theirs.id, theirs.id)  # no other organisation's id as a cursor
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "queued"  # untouched by the stranger


def test_hostile_requests_are_clear_errors_never_500s(research: Any, gateway: Server) -> None:
    tenant, _, http = research
    huge = json.dumps({"k": "v" * 5000})
    too_many = json.dumps({f"k{i}": "v" for i in range(17)})
    for metadata in (huge, too_many):
        refused = http.get("/files", headers={**EAST, "x-tfy-metadata": metadata})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "x-tfy-metadata"
    odd = http.get("/files", headers={**EAST, "user-agent": "caf\xe9".encode("latin-1")})  # type: ignore[dict-item]
    assert odd.status_code == 200 and odd.headers["openft-provider-account"] == "east"

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "east/m", "messages": [{"role": "user", "content": "'
        for _ in range(5):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    too_large = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunks(), timeout=60,
                           headers={"Authorization": f"Bearer {tenant.key}", "content-type": "application/json"})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
    not_json = http.post("/chat/completions", content=b'{"model": "east/m", "temperature": NaN, "messages": []}',
                         headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "openft-provider-account" not in not_json.headers
    deep = b'{"model": "east/m", "messages": [], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    lone = b'{"model": "east/m", "messages": [{"role": "user", "content": "\\ud800"}]}'
    for body, param in ((deep, None), (lone, "messages.0.content")):  # read here: refused here, never forwarded
        refused = http.post("/chat/completions", content=body, headers={"content-type": "application/json"})
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, param), refused.text
        assert "openft-provider-account" not in refused.headers


def test_a_client_that_leaves_mid_body_creates_nothing_upstream(research: Any, upstream: Server,
                                                                gateway: Server) -> None:
    tenant, _, _ = research
    there = upstream_sdk(upstream, gateway)
    before = len(there.fine_tuning.jobs.list(limit=100).data)
    training = research[1].files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune",
                                        extra_headers=EAST).id
    whole = json.dumps({"model": SMOLLM, "training_file": training}).encode()  # a job the upstream would create
    with socket.create_connection(("127.0.0.1", gateway.port)) as raw:
        raw.sendall(b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: gateway\r\n"
                    b"Authorization: Bearer " + tenant.key.encode() + b"\r\nx-tfy-provider-name: east\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + f"{len(whole):x}\r\n".encode() + whole + b"\r\n")  # and the body's last chunk never comes
    wait_for_log(gateway, "route='POST /fine_tuning/jobs' status=- (client-gone)")
    assert len(there.fine_tuning.jobs.list(limit=100).data) == before


def test_a_client_that_stops_reading_is_let_go_within_the_timeout(research: Any, gateway: Server) -> None:
    _, sdk, _ = research
    fast = {"x-tfy-provider-name": "east-fast"}
    big = sdk.files.create(file=("big.jsonl", GeneratedJsonl(16 * 1024 * 1024)), purpose="fine-tune",
                           extra_headers=fast)
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", gateway.port))
        raw.sendall(f"GET /v1/files/{big.id}/content HTTP/1.1\r\nHost: gateway\r\n"
                    f"Authorization: Bearer {research[0].key}\r\nx-tfy-provider-name: east-fast\r\n\r\n".encode())
        wait_for_log(gateway, "route='GET /files/{id}/content' status=200 (client-gone)")  # never read


def test_misbehaving_upstreams_get_the_errors_a_gateway_gives(research: Any, gateway: Server) -> None:
    _, _, http = research
    mock = {"x-tfy-provider-name": "mock"}
    redirect = http.get("/files/redirect", headers=mock)
    assert redirect.status_code == 502 and "attacker" not in redirect.text and "location" not in redirect.headers
    busy = http.get("/files/busy", headers=mock)
    assert (busy.status_code, busy.headers["retry-after"], busy.json()["error"]["code"]) == (
        429, "7", "rate_limit_exceeded")
    echo = http.get("/files/echo", headers=mock)
    key = gateway.extra_env["UPSTREAM_KEY"]
    assert echo.status_code == 400 and key[:8] not in echo.text and "Bearer [reda" in echo.text
    began = time.monotonic()
    trickle = http.get("/files/trickle", headers=mock)
    assert trickle.status_code == 504 and time.monotonic() - began < 4
    assert trickle.json()["error"]["code"] == "provider_timeout"
    nested = http.get("/files/nested", headers=mock)
    assert nested.status_code == 200 and len(nested.content) == 200_000
    named = http.get("/files/utf8", headers=mock)  # passed on byte for byte
    assert named.status_code == 200 and "训练".encode() in dict(named.headers.raw)[b"content-disposition"]


def test_providers_list_names_where_keys_come_from_and_remove_takes_an_account_out(
        research: Any, gateway: Server) -> None:
    _, _, http = research

    def providers(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "openft", "providers", *args], env=gateway.env,
                              capture_output=True, text=True, timeout=60)

    listed = providers("list").stdout
    assert "east  openai-compatible  " in listed and f"env:{UPSTREAM_KEY_ENV}  research" in listed
    assert gateway.extra_env["UPSTREAM_KEY"] not in listed
    assert providers("remove", "nowhere").returncode != 0
    assert providers("remove", "badkey").returncode == 0
    assert "badkey" not in [p["name"] for p in http.get("/me").json()["providers"]]  # the server re-read it
    refused = providers("add", "bad name", "--base-url", "http://127.0.0.1:1/v1", "--api-key-env", "K",
                        "--org", "*")
    assert refused.returncode != 0 and "account name 'bad name'" in refused.stderr


def test_a_stopped_upstream_is_a_502_naming_the_account_and_the_key_is_never_shown(
        research: Any, upstream: Server, gateway: Server, seen: Seen) -> None:
    _, sdk, http = research
    uploaded = sdk.files.create(file=("s.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune", extra_headers=EAST)
    upstream.stop()
    began = time.monotonic()
    gone = http.get(f"/files/{uploaded.id}")
    assert gone.status_code == 502 and time.monotonic() - began < 20  # refused at once; the account waits 60 s
    assert gone.json()["error"]["code"] == "provider_unreachable" and "'east'" in gone.json()["error"]["message"]
    assert sdk.files.list().object == "list"
    key = gateway.extra_env["UPSTREAM_KEY"]
    log = gateway.log()
    assert "routed account=east route='GET /files/{id}' status=502" in log
    assert "routed account=east route='POST /files' status=200 first_byte_ms=" in log  # not '(client-gone)'
    others = gateway.extra_env["OTHER_UPSTREAM_KEYS"].split()
    for secret in (key, key[-12:], *others, *(k[-12:] for k in others), "sk-wrong-key-that-the-upstream-refuses",
                   "wrong-key-that"):
        assert secret not in log
        assert not [text for text in seen.texts if secret in text]
