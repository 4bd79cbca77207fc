"""The one place errors become HTTP responses, always the OpenAI envelope:
``{"error": {"message", "type", "param", "code"}}``.

Domain errors keep their status; the framework's validation errors become
400 with ``param`` naming the field; unknown routes 404 and wrong methods 405;
anything unexpected is logged with a request id and answered with a 500 that
carries the id and no stack trace.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.errors import OpenFTError, RateLimited, UpstreamError, error_body

log = logging.getLogger("openft.api")

REQUEST_ID_HEADER = "x-request-id"


def envelope(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(message, type=type, param=param, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


async def _openft_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenFTError)
    return error_response(exc)


def error_response(exc: OpenFTError) -> JSONResponse:
    """A domain error's response (also for layers in front of the routes)."""
    headers = {"www-authenticate": "Bearer"} if exc.status_code == 401 else None
    if exc.status_code == 503:
        headers = {"retry-after": "1"}
    if isinstance(exc, RateLimited):
        headers = {"retry-after": str(exc.retry_after)}
    if isinstance(exc, UpstreamError) and exc.retry_after:
        headers = {"retry-after": exc.retry_after}
    return envelope(
        exc.status_code,
        exc.message,
        type=exc.error_type,
        param=exc.param,
        code=exc.code,
        headers=headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first: dict[str, Any] = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return envelope(
            400,
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        )
    where, *path = first.get("loc", ("body",))
    param = ".".join(str(p) for p in path) or None
    named = (first.get("ctx") or {}).get("param")  # a model-level check names its field itself
    if named and not path:
        param, path = named, named.split(".")
    if where == "body" and not path and first.get("type") == "missing":
        return envelope(400, "The request body is missing; send a JSON object.")
    detail = str(first.get("msg", "is invalid"))
    if first.get("type") == "missing":
        detail = "is required"
    elif first.get("type") == "extra_forbidden":
        detail = "is not a recognised parameter"
    message = f"Invalid '{param}': {detail}." if param else f"Invalid request body: {detail}."
    return envelope(400, message, param=param, code="invalid_value")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        return http_exception_response(exc)
    return envelope(
        exc.status_code, message, code=getattr(exc, "code", None), param=getattr(exc, "param", None),
        headers=getattr(exc, "headers", None),
    )


def http_exception_response(exc: StarletteHTTPException) -> JSONResponse:
    """An HTTPException raised with its own message (the body limits' 413 and 408, a strict body's 400),
    also for layers in front of the routes."""
    return envelope(exc.status_code, str(exc.detail), code=getattr(exc, "code", None),
                    param=getattr(exc, "param", None), headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.scope.get("openft.request_id") or _new_request_id()
    log.exception("unhandled error in %s %s [%s]", request.method, request.url.path, request_id)
    return envelope(
        500,
        "The server had an error while processing your request. "
        f"Quote request id {request_id} when reporting it.",
        type="server_error",
        headers={REQUEST_ID_HEADER: request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenFTError, _openft_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestIdMiddleware:
    """Gives every request an id (``x-request-id`` header, also in 500 bodies)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _new_request_id()
        scope["openft.request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
