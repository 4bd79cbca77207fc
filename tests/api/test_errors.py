"""Every failure is an OpenAI error envelope with the right status and param."""

from __future__ import annotations

import pytest

from support import SMOLLM, Tenant

pytestmark = pytest.mark.api


def assert_envelope(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["param"] == param
    return body["error"]


class TestEnvelope:
    def test_unknown_route(self, tenant: Tenant) -> None:
        with tenant.http() as http:
            error = assert_envelope(http.get("/does/not/exist"), 404)
        assert "GET" in error["message"] and "/v1/does/not/exist" in error["message"]

    def test_unknown_route_outside_prefixes(self, tenant: Tenant) -> None:
        with tenant.http("") as http:
            assert_envelope(http.get("/nothing-here"), 404)

    def test_wrong_method(self, tenant: Tenant) -> None:
        with tenant.http("/api/llm") as http:
            assert_envelope(http.put("/fine_tuning/jobs"), 405)
            assert_envelope(http.delete("/fine_tuning/jobs/ftjob-x"), 405)

    @pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b"null"])
    def test_malformed_bodies(self, tenant: Tenant, body: bytes) -> None:
        with tenant.http() as http:
            response = http.post("/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
        assert_envelope(response, 400)

    def test_missing_required_field_names_it(self, tenant: Tenant) -> None:
        with tenant.http() as http:
            error = assert_envelope(http.post("/fine_tuning/jobs", json={"model": SMOLLM}), 400, "training_file")
        assert "training_file" in error["message"]

    def test_every_response_has_a_request_id(self, tenant: Tenant) -> None:
        with tenant.http() as http:
            ok = http.get("/files")
            bad = http.get("/files/file-nope")
        assert ok.headers["x-request-id"].startswith("req_")
        assert bad.headers["x-request-id"] != ok.headers["x-request-id"]


class TestBodyCap:
    """JSON bodies are capped (OPENFT_MAX_REQUEST_BYTES, 4 MiB by default)
    before they are read, so a huge body costs the server no memory."""

    def _exchange(self, tenant: Tenant, head: bytes, body_chunks) -> tuple[int, dict]:
        import json
        import socket

        with socket.create_connection(("127.0.0.1", tenant.server.port), timeout=30) as sock:
            sock.sendall(head)
            try:
                for chunk in body_chunks:
                    sock.sendall(chunk)
            except OSError:
                pass  # the server answered and closed while we were still sending
            received = b""
            while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 2:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        status = int(received.split(b" ", 2)[1])
        body = received.split(b"\r\n\r\n", 1)[1]
        if b"\r\n" in body and body[:1] != b"{":  # chunked response
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        return status, json.loads(body.split(b"\r\n")[0])

    def _head(self, tenant: Tenant, extra: str) -> bytes:
        return (
            f"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tenant.key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n"
        ).encode()

    def test_declared_length_over_cap_is_413_before_reading(self, tenant: Tenant) -> None:
        import psutil

        process = psutil.Process(tenant.server.process.pid)
        before = process.memory_info().rss
        size = 50 * 1024 * 1024
        # Only the headers and 1 KiB are sent: an answer proves nothing more was read.
        status, body = self._exchange(
            tenant, self._head(tenant, f"Content-Length: {size}\r\n"), [b'{"model": "' + b"x" * 1024]
        )
        assert status == 413
        assert body["error"]["code"] == "request_too_large"
        assert "OPENFT_MAX_REQUEST_BYTES" in body["error"]["message"]
        assert process.memory_info().rss - before < 20 * 1024 * 1024

    def test_chunked_body_over_cap_is_413(self, tenant: Tenant) -> None:
        import psutil

        process = psutil.Process(tenant.server.process.pid)
        before = process.memory_info().rss
        piece = b"x" * (1024 * 1024)
        chunks = [b'{"model": "'] + [piece] * 50
        encoded = (b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        status, body = self._exchange(tenant, self._head(tenant, "Transfer-Encoding: chunked\r\n"), encoded)
        assert status == 413
        assert body["error"]["code"] == "request_too_large"
        assert process.memory_info().rss - before < 40 * 1024 * 1024

    def test_body_under_cap_is_parsed_as_usual(self, tenant: Tenant) -> None:
        with tenant.http() as http:
            response = http.post("/fine_tuning/jobs", json={"model": SMOLLM, "suffix": "x" * 100_000})
        assert_envelope(response, 400, "training_file")
