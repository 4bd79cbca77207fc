"""Inputs that reached a 500 or a hang: each is now a 4xx in the OpenAI
envelope, in bounded time, on the real server."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from support import Server, Tenant

pytestmark = pytest.mark.security


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def python_grader(source: str, **extra: object) -> dict:
    return {"type": "python", "name": "p", "source": source, **extra}


def test_a_file_line_nested_100000_deep_names_its_line(attacker: Tenant) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    good = json.dumps({"prompt": "a", "completion": "b"}).encode()
    with attacker.http() as http:
        response = http.post("/files", files={"file": ("deep.jsonl", good + b"\n" + deep + b"\n")},
                             data={"purpose": "fine-tune"})
    error = error_of(response)
    assert error["param"] == "file" and "Line 2: is nested too deeply" in error["message"]


def test_a_json_body_nested_past_the_decoder_is_refused(attacker: Tenant) -> None:
    body = b'{"grader": ' + b"[" * 100_000 + b"]" * 100_000 + b', "model_sample": "x"}'
    with attacker.http() as http:
        response = http.post("/fine_tuning/alpha/graders/run", content=body,
                             headers={"content-type": "application/json"})
    assert "nested too deeply" in error_of(response)["message"]


def test_a_metadata_header_nested_1100_deep(attacker: Tenant) -> None:
    header = '{"a": ' * 1100 + '"x"' + "}" * 1100
    with attacker.http() as http:
        response = http.get("/fine_tuning/jobs", headers={"x-tfy-metadata": header})
    assert error_of(response)["param"] == "x-tfy-metadata"


@pytest.mark.parametrize("source", ["-" * 200_000 + "1", "not " * 60_000 + "x"],
                         ids=["200000 unary minus", "60000 not"])
def test_a_grader_source_that_recurses_the_parser(attacker: Tenant, source: str) -> None:
    with attacker.http() as http:
        response = http.post("/fine_tuning/alpha/graders/validate", json={"grader": python_grader(source)})
    error = error_of(response)
    assert error["param"] == "grader.source" and "nested too deeply" in error["message"]


SURROGATE = "\\ud800"  # the JSON escape of a lone surrogate, as a client sends it


def string_check(name: str = "n", reference: str = "b") -> str:
    """A string_check grader as JSON text (so escapes stay as sent)."""
    return (f'{{"type": "string_check", "name": "{name}", "input": "{{{{sample.output_text}}}}", '
            f'"reference": "{reference}", "operation": "eq"}}')


@pytest.mark.parametrize(("route", "body", "param"), [
    ("validate", f'{{"grader": {{"type": "python", "name": "p", '
                 f'"source": "def grade(s, i):\\n    return 1 # {SURROGATE}"}}}}', "grader.source"),
    ("validate", f'{{"grader": {string_check(name=SURROGATE)}}}', "grader.name"),
    ("run", f'{{"grader": {string_check(reference=SURROGATE)}, "model_sample": "x"}}', "grader.reference"),
    ("run", f'{{"grader": {string_check()}, "model_sample": "x{SURROGATE}"}}', "model_sample"),
    ("run", f'{{"grader": {string_check()}, "model_sample": "x", "item": {{"k{SURROGATE}": 1}}}}', "item.k\\ud800"),
])
def test_a_lone_surrogate_is_refused_where_it_is(attacker: Tenant, route: str, body: str, param: str) -> None:
    with attacker.http() as http:
        response = http.post(f"/fine_tuning/alpha/graders/{route}", content=body.encode(),
                             headers={"content-type": "application/json"})
    error = error_of(response)
    assert error["param"] == param and "lone surrogate" in error["message"]


def test_a_paired_surrogate_is_an_ordinary_character(attacker: Tenant) -> None:
    smile = "\\ud83d\\ude00"  # a pair: one character outside the basic plane
    body = f'{{"grader": {string_check(reference=smile)}, "model_sample": "{smile}"}}'
    with attacker.http() as http:
        response = http.post("/fine_tuning/alpha/graders/run", content=body.encode(),
                             headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["reward"] == 1.0, response.text


def test_listing_jobs_with_more_metadata_pairs_than_a_job_carries(attacker: Tenant) -> None:
    params = {f"metadata[k{i}]": "v" for i in range(64)}
    with attacker.http() as http:
        assert error_of(http.get("/fine_tuning/jobs", params=params))["param"] == "metadata"
        assert http.get("/fine_tuning/jobs", params=dict(list(params.items())[:16])).status_code == 200


def test_a_request_line_past_the_servers_limit_gets_the_envelope(hostile_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=30) as conn:
        conn.sendall(f"GET /v1/models?x={'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http_request"


def raw_exchange(server: Server, head: bytes, body_start: bytes, wait: float) -> tuple[bytes, float]:
    """Send a request whose body stops part-way; the response, and how long it took."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as conn:
        started = time.monotonic()
        conn.sendall(head + body_start)
        received = b""
        while chunk := conn.recv(65536):  # ends when the server closes the connection
            received += chunk
        return received, time.monotonic() - started


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/files", "/v1/fine_tuning/alpha/graders/run"])
def test_a_body_that_stalls_is_refused_and_its_connection_closed(hostile_server: Server, attacker: Tenant,
                                                                  path: str) -> None:
    kind = b"multipart/form-data; boundary=xyz" if path.endswith("files") else b"application/json"
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {attacker.key}\r\n".encode()
            + b"Content-Type: " + kind + b"\r\nContent-Length: 100000\r\n\r\n")
    start = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{"prompt": '
             if path.endswith("files") else b'{"model": "local/tiny", "messa')
    received, took = raw_exchange(hostile_server, head, start, wait=30)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b'"code":"request_timeout"' in received and b"OPENFT_BODY_TIMEOUT_SECONDS" in received
    assert took < 15  # the setting is 2 s; the connection did not stay open (recv saw it close)


def test_an_upload_without_its_closing_boundary_is_refused(attacker: Tenant) -> None:
    line = json.dumps({"prompt": "a", "completion": "b"}) + "\n"
    body = ("--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" + line * 20).encode()
    with attacker.http() as http:
        response = http.post("/files", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"})
        error = error_of(response)
        assert error["param"] == "file" and "closing boundary" in error["message"]
        assert http.post("/files", content=body + b"\r\n--xyz--\r\n",
                         headers={"content-type": "multipart/form-data; boundary=xyz"}).status_code == 200


def test_a_prompt_longer_than_the_models_context(attacker: Tenant) -> None:
    """``local/tiny`` takes 512 positions."""
    long = " ".join(["word"] * 600)
    with attacker.http() as http:
        too_long = http.post("/chat/completions", json={
            "model": "local/tiny", "messages": [{"role": "user", "content": long}]})
        error = error_of(too_long)
        assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
        assert "maximum context length is 512 tokens" in error["message"]
        half = " ".join(["word"] * 300)
        with_budget = http.post("/chat/completions", json={
            "model": "local/tiny", "max_tokens": 400, "messages": [{"role": "user", "content": half}]})
        assert error_of(with_budget)["code"] == "context_length_exceeded"
        fits = http.post("/chat/completions", json={
            "model": "local/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": half}]})
    assert fits.status_code == 200, fits.text
