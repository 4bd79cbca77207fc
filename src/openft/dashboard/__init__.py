"""The web dashboard: static files served by ``openft serve`` at ``/``.

It is a plain client of the public API: ES modules in ``static/js`` call
``/v1/...`` with the API key the user signs in with, which the browser keeps
in ``sessionStorage`` (gone when the tab closes; never in a URL or cookie).
No build step, no third-party scripts, fonts or CDNs: the files below are
the whole front end, shipped in the package.

Every response (the dashboard's and the API's) carries security headers:
``X-Content-Type-Options: nosniff``, frame denial, no referrer, and (all but
FastAPI's ``/docs`` pages) a Content-Security-Policy that allows only this
origin's scripts, styles and connections (no inline script). ``/static/*`` files revalidate on every load (``no-cache``
with an ETag), so an upgraded server never runs a stale script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).with_name("static")

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

_WITH_CSP = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()), *SECURITY_HEADERS]
_CDN_PAGES = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


class SecurityHeadersMiddleware:
    """Adds ``SECURITY_HEADERS`` to every HTTP response, and the CSP to every
    one but FastAPI's ``/docs`` pages, whose Swagger UI loads from a CDN
    (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = SECURITY_HEADERS if scope["path"] in _CDN_PAGES else _WITH_CSP

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, with_headers)


class _RevalidatedFiles(StaticFiles):
    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard: ``/`` is its page, ``/static/*`` its files."""

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", _RevalidatedFiles(directory=STATIC), name="dashboard")
    app.add_middleware(SecurityHeadersMiddleware)
