"""The HTTP protocol openft serves with: uvicorn's httptools protocol, except
that a request the HTTP parser itself refuses (a request line or headers
past its limits, a malformed request) is answered with the OpenAI error
envelope as JSON instead of uvicorn's plain text. The connection is closed
after it, as uvicorn does."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from openft.errors import error_body

MESSAGE = ("The server could not read this HTTP request: its request line or headers are malformed or "
           "longer than the server accepts (send long data in the body).")


def bad_request() -> bytes:
    """The raw 400 response, envelope included."""
    body = json.dumps(error_body(MESSAGE, code="invalid_http_request")).encode()
    head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n")
    return head + body


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        self.transport.write(bad_request())
        self.transport.close()
