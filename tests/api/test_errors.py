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
