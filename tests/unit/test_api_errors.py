"""The 500 path: an unexpected exception is logged and answered with an
envelope carrying the request id, and no stack trace reaches the client."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from openft.api.errors import RequestIdMiddleware, install_error_handlers
from openft.errors import Conflict


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("nope", code="invalid_job_state")

    return app


@pytest.mark.anyio
async def test_unexpected_exception_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level(logging.ERROR, logger="openft.api"):
            response = await client.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.anyio
async def test_domain_errors_keep_their_status() -> None:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/conflict")
    assert response.status_code == 409
    assert response.json() == {"error": {"message": "nope", "type": "invalid_request_error", "param": None,
                                         "code": "invalid_job_state"}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
