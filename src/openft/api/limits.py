"""Request body cap: every route but the file upload reads at most
``OPENFT_MAX_REQUEST_BYTES`` of body.

A declared ``Content-Length`` above the cap is answered 413 before a byte of
the body is read; a body without a length (chunked) is counted as it
arrives and refused the moment it passes the cap, so a huge JSON document
is never held in memory or parsed. ``POST /files`` streams to storage under
its own cap (``OPENFT_MAX_FILE_BYTES``) and is exempt. Every body, uploads
included, must keep arriving (``OPENFT_BODY_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import anyio
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


class BodyStalled(HTTPException):
    """Raised from ``receive`` when the next piece of a body does not arrive in
    time; rendered as the 408 envelope, and the connection is closed."""

    code = "request_timeout"

    def __init__(self, seconds: float):
        super().__init__(408, f"The request body stopped arriving: nothing came for {seconds:g} s "
                              "(OPENFT_BODY_TIMEOUT_SECONDS).", headers={"connection": "close"})


class BodyLimitMiddleware:
    """The body cap (above), and a time limit on a body that stalls: each
    piece of a request body must arrive within ``OPENFT_BODY_TIMEOUT_SECONDS``
    of the previous one (uploads included), so a client that stops sending
    cannot hold a connection and a worker thread forever. Once the body is
    complete, ``receive`` waits as long as it likes (a streamed response
    listens on it for the client's disconnect)."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_seconds: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        capped = not _is_upload(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if capped and declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = envelope(413, too_large_message(self.max_bytes), code=RequestTooLarge.code)
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        received = 0
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            with anyio.move_on_after(self.idle_seconds) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise BodyStalled(self.idle_seconds)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if capped and received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            else:
                complete = True
            return message

        await self.app(scope, limited, send)
