"""Routing to provider accounts, in front of the API's own routes.

A request under ``/v1`` or ``/api/llm`` to a files or fine-tuning route, or
to chat completions, is sent to a provider account (``openft.gateway``)
when:

- it carries ``x-tfy-provider-name: <account>`` naming an account of kind
  ``openai-compatible`` (an ``openft`` account is this deployment: the
  request goes on to the local routes);
- its path names an id the organisation got from an account earlier (the
  route is remembered per organisation and id, so ``client.files.retrieve``
  or ``jobs.retrieve`` work without the header; with it, the header wins);
- it is a chat completion whose ``model`` is ``<account>/<model>``; the
  upstream sees ``<model>``.

Everything else, and every request while no upstream account is configured,
goes on untouched. The caller's own key authenticates it here first (a
refused key goes on to the routes and gets their 401); the upstream sees the
account's key, never the caller's. An account the organisation may not use
is a 404, an unknown name a 400 naming the header. Bodies stream both ways
(uploads, downloads, chat streams); JSON answers of files and fine-tuning
routes are read whole (up to ``REMEMBER_LIMIT``) to remember the ids they
name before the client sees them. Each routed request is one log line on
``openft.gateway`` with account, route, status and latency, and the answer
carries ``openft-provider-account``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.api.context import AppContext
from openft.api.deps import GATEWAY_PREFIX, tfy_metadata
from openft.api.errors import envelope, error_response
from openft.errors import InvalidRequest, NotFound, OpenFTError
from openft.gateway.accounts import ProviderAccount
from openft.gateway.forward import Outbound, UpstreamResponse, held_objects
from openft.store.queries import orgs, routes

log = logging.getLogger("openft.gateway")

PREFIXES = ("/v1", GATEWAY_PREFIX)
CHAT = "/chat/completions"
HEADER = "x-tfy-provider-name"
ACCOUNT_HEADER = "openft-provider-account"
REMEMBER_LIMIT = 8 * 1024 * 1024


def split(path: str) -> tuple[str, str] | None:
    """(prefix, rest) of a routable path: files, fine-tuning, chat completions."""
    for prefix in PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix):]
            if rest in ("/files", CHAT) or rest.startswith(("/files/", "/fine_tuning/")):
                return prefix, rest
    return None


def path_object(rest: str) -> str | None:
    """The file or job id a routable path names, if any."""
    parts = rest.strip("/").split("/")
    if parts[0] == "files" and len(parts) > 1:
        return parts[1]
    if parts[:2] == ["fine_tuning", "jobs"] and len(parts) > 2 and parts[2] != "estimate":
        return parts[2]
    return None


def route_template(method: str, rest: str) -> str:
    found = path_object(rest)
    return f"{method} {rest.replace('/' + found, '/{id}', 1) if found else rest}"


@dataclass(frozen=True)
class Route:
    """Where a routed request goes."""

    name: str
    account: ProviderAccount
    body: bytes | None = None
    """The request body when it was read here (a chat completion), else streamed."""


LOCAL = ""
"""What ``RouteMemory`` holds for an id this deployment answered for itself."""


class RouteMemory:
    """What this process knows of where (organisation, id) pairs live, so a
    request for a known id costs no database read: the account an upstream
    id came from (as ``routed_objects`` holds it), or ``LOCAL`` for an id this
    deployment answered with a 2xx (ids are unique: it stays local). Bounded;
    the oldest entries go first."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self._entries: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, org_id: str, object_id: str) -> str | None:
        return self._entries.get((org_id, object_id))

    def put(self, org_id: str, object_id: str, where: str) -> None:
        self._entries[(org_id, object_id)] = where
        self._entries.move_to_end((org_id, object_id))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class GatewayMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app
        self._org_names: dict[str, str | None] = {}
        self.memory = RouteMemory()

    async def org_name(self, ctx: AppContext, org_id: str) -> str | None:
        """An organisation's name (accounts may list names); names never change, so they are kept."""
        if org_id not in self._org_names:
            async with ctx.reader() as db:
                name = await orgs.read_org_name(db, org_id)
            if len(self._org_names) > 10_000:
                self._org_names.clear()
            self._org_names[org_id] = name
        return self._org_names[org_id]

    async def account(self, ctx: AppContext, name: str, org_id: str, *, param: str | None = HEADER
                      ) -> ProviderAccount:
        """The account ``name`` if this organisation may use it: unknown is a 400, not allowed a 404."""
        account = ctx.providers.get(name)
        org_name = await self.org_name(ctx, org_id)
        if account is None:
            usable = ", ".join(ctx.providers.usable(org_id, org_name))
            raise InvalidRequest(f"Unknown provider account {name[:64]!r} in the {HEADER} header; "
                                 f"this organisation may use: {usable}.", param=HEADER, code="unknown_provider")
        if not account.allows(org_id, org_name):
            raise NotFound("provider_account", name, param=param)
        return account

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = split(scope["path"]) if scope["type"] == "http" else None
        ctx: AppContext | None = getattr(scope["app"].state, "ctx", None) if parts else None
        if parts is None or ctx is None or not ctx.providers.upstream_names():
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            assert ctx.authenticator is not None
            principal = await ctx.authenticator.authenticate(headers.get("authorization"))
        except OpenFTError:
            await self.app(scope, receive, send)  # the route answers with its 401
            return
        try:
            metadata = tfy_metadata(headers.get("x-tfy-metadata"))
            route, receive = await self._choose(ctx, scope, receive, parts[1], principal.org_id, headers)
        except OpenFTError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if route is None:
            object_id = path_object(parts[1])
            if object_id is None or self.memory.get(principal.org_id, object_id) == LOCAL:
                await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, self._noting_local(send, principal.org_id, object_id))
            return
        await Forwarding(ctx, scope, receive, send, route, principal.org_id, parts[1], metadata, self.memory).run()

    def _noting_local(self, send: Send, org_id: str, object_id: str) -> Send:
        """``send``, remembering ``object_id`` as local once this deployment answers it with a 2xx."""
        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.memory.put(org_id, object_id, LOCAL)
            await send(message)

        return noting

    async def _choose(self, ctx: AppContext, scope: Scope, receive: Receive, rest: str, org_id: str,
                      headers: Headers) -> tuple[Route | None, Receive]:
        """The route of a request, and the ``receive`` the next layer reads its body from."""
        named = headers.get(HEADER)
        if named is not None:
            account = await self.account(ctx, named, org_id)
            return (Route(named, account) if account.upstream else None), receive
        if rest == CHAT and scope["method"] == "POST":
            body = await read_body(receive)
            replay = replaying(body, receive)
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                return None, replay  # the route answers with its 400
            model = document.get("model") if isinstance(document, dict) else None
            name, _, rest_of_model = model.partition("/") if isinstance(model, str) else ("", "", "")
            if not rest_of_model or name not in ctx.providers.upstream_names():
                return None, replay
            account = await self.account(ctx, name, org_id, param="model")
            document["model"] = rest_of_model
            return Route(name, account, json.dumps(document).encode()), replay
        object_id = path_object(rest)
        if object_id is None:
            return None, receive
        name = self.memory.get(org_id, object_id)
        if name is None:
            async with ctx.reader() as db:
                name = await routes.read_route(db, org_id, object_id)
            if name is not None:
                self.memory.put(org_id, object_id, name)
        if not name:  # unknown, or this deployment's
            return None, receive
        account = ctx.providers.get(name)
        if account is None or not account.upstream or not account.allows(org_id, await self.org_name(ctx, org_id)):
            raise NotFound("provider_account", name, param=None)
        return Route(name, account), receive


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what the client sends next (its disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Forwarding:
    """One routed request: sent, answered, logged."""

    def __init__(self, ctx: AppContext, scope: Scope, receive: Receive, send: Send, route: Route, org_id: str,
                 rest: str, metadata: dict[str, str] | None, memory: RouteMemory):
        self.ctx, self.scope, self.receive, self.send = ctx, scope, receive, send
        self.route, self.org_id, self.rest, self.metadata = route, org_id, rest, metadata
        self.memory = memory
        self.body_sent = anyio.Event()
        self.started = False
        self.status = 0
        self.sent_bytes = 0
        self.first_byte: float | None = None

    async def run(self) -> None:
        begun = time.monotonic()
        failed: OpenFTError | HTTPException | None = None
        try:
            try:
                async with self.ctx.gateway_capacity.slot(self.org_id), anyio.create_task_group() as group:
                    group.start_soon(self._stop_when_the_client_leaves, group.cancel_scope)
                    try:
                        await self._exchange()
                    except (OpenFTError, HTTPException) as exc:  # HTTPException: the body stalled or passed a cap
                        failed = exc
                    finally:
                        group.cancel_scope.cancel()
            except OpenFTError as exc:  # no capacity left
                failed = exc
            if failed is not None:
                await self._fail(failed)
        finally:
            total = (time.monotonic() - begun) * 1000
            first = (self.first_byte - begun) * 1000 if self.first_byte else total
            log.info("routed account=%s route=%r status=%s first_byte_ms=%.0f total_ms=%.0f bytes=%d org=%s "
                     "request_id=%s metadata=%s", self.route.name, route_template(self.scope["method"], self.rest),
                     self.status or "client-gone", first, total, self.sent_bytes, self.org_id,
                     self.scope.get("openft.request_id"), json.dumps(self.metadata) if self.metadata else "-")

    async def _fail(self, failed: OpenFTError | HTTPException) -> None:
        self.status = failed.status_code
        if self.started:  # mid-answer: the connection ends without finishing the body
            raise RuntimeError(f"provider account {self.route.name!r} failed mid-answer ({self.status})")
        if isinstance(failed, OpenFTError):
            response = error_response(failed)
        else:
            response = envelope(failed.status_code, str(failed.detail), code=getattr(failed, "code", None))
        response.headers[ACCOUNT_HEADER] = self.route.name
        await response(self.scope, self.receive, self.send)

    async def _stop_when_the_client_leaves(self, scope: anyio.CancelScope) -> None:
        await self.body_sent.wait()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def _client_body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                break
            yield message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.body_sent.set()

    async def _exchange(self) -> None:
        headers = Headers(scope=self.scope)
        body: bytes | AsyncIterator[bytes]
        if self.route.body is not None:
            body = self.route.body
            headers_out = {k: v for k, v in headers.items() if k != "content-length"}
            self.body_sent.set()
        else:
            body = self._client_body()
            headers_out = dict(headers.items())
        outbound = Outbound(self.scope["method"], self.rest, self.scope.get("query_string", b"").decode("latin-1"),
                            headers_out, body)
        answer = await self.ctx.upstreams.open(self.route.name, self.route.account, outbound)
        self.body_sent.set()
        try:
            await self._relay(answer)
        finally:
            await answer.aclose()

    async def _relay(self, answer: UpstreamResponse) -> None:
        chunks = answer.chunks()
        held: list[bytes] = []
        if answer.is_json and self.rest != CHAT:
            held, complete = await _read_up_to(chunks, REMEMBER_LIMIT)
            if complete:
                await self._remember(b"".join(held))
            else:
                log.warning("routed answer of account %s is over %d bytes: its ids are not remembered",
                            self.route.name, REMEMBER_LIMIT)
        response_headers = [(k.encode(), v.encode()) for k, v in answer.headers]
        response_headers.append((ACCOUNT_HEADER.encode(), self.route.name.encode()))
        if answer.upstream_request_id:
            response_headers.append((b"openft-upstream-request-id", answer.upstream_request_id.encode("latin-1")))
        self.first_byte = time.monotonic()
        await self.send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        self.started, self.status = True, answer.status
        for chunk in held:
            await self._body(chunk)
        try:
            async for chunk in chunks:
                await self._body(chunk)
        except OpenFTError as exc:
            if not answer.is_event_stream:
                raise
            event = json.dumps({"error": {"message": exc.message, "type": exc.error_type, "param": None,
                                          "code": exc.code}})
            await self._body(f"data: {event}\n\ndata: [DONE]\n\n".encode())
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _body(self, chunk: bytes) -> None:
        if chunk:
            self.sent_bytes += len(chunk)
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _remember(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            return
        name = self.route.name
        found = [(object_id, kind) for object_id, kind in dict.fromkeys(held_objects(document))
                 if self.memory.get(self.org_id, object_id) != name]  # known: no write
        if found:
            async with self.ctx.transaction() as session:
                await routes.remember_routes(session, self.org_id, name, found, self.metadata)
            for object_id, _ in found:
                self.memory.put(self.org_id, object_id, name)


async def _read_up_to(chunks: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The first chunks of a body up to ``limit`` bytes, and whether that was all of it."""
    held: list[bytes] = []
    size = 0
    async for chunk in chunks:
        held.append(chunk)
        size += len(chunk)
        if size > limit:
            return held, False
    return held, True
