"""Request body cap: every route but the file upload reads at most
``OPENFT_MAX_REQUEST_BYTES`` of body.

A declared ``Content-Length`` above the cap is answered 413 before a byte of
the body is read; a body without a length (chunked) is counted as it
arrives and refused the moment it passes the cap, so a huge JSON document
is never held in memory or parsed. ``POST /files`` streams to storage under
its own cap (``OPENFT_MAX_FILE_BYTES``) and is exempt.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.api.errors import envelope


class RequestTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the cap; FastAPI
    passes HTTPExceptions through its body parsing, and the one error handler
    renders it as the 413 envelope."""

    code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return (
        f"The request body is larger than the maximum of {limit} bytes "
        "(OPENFT_MAX_REQUEST_BYTES); upload large data with POST /files."
    )


def _is_upload(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/files")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_upload(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = envelope(413, too_large_message(self.max_bytes), code=RequestTooLarge.code)
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
