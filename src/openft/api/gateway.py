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
- it is a chat completion whose ``model`` is ``<account>/<model>`` naming an
  account the organisation may use; the upstream sees ``<model>``.

Everything else, and every request while no upstream account is configured,
goes on untouched. The caller's own key authenticates it here first (a
refused key goes on to the routes and gets their 401); the upstream sees the
account's key, never the caller's. An account the organisation may not use
is a 404, an unknown name a 400 naming the header.

**Shared accounts.** All organisations that may use an account reach the
upstream with its one key, so where an account is shared (``*`` or several
organisations) each organisation reaches only what it made or was given
through the gateway: files and jobs it created there (and a job's result
files, fine-tuned model and checkpoints' models, once it read them), as
``routed_objects`` remembers them. Another id is a 404, a job naming
another's file or fine-tuned model is a 404 at that field, a list shows its
own objects only, and chat with an ``ft:`` model it was not given is a 404.
An account with exactly one organisation is that organisation's whole.

**What is read here.** Bodies stream both ways (uploads, downloads, chat
streams). The JSON answer of a create, retrieve or action is read whole (up
to ``REMEMBER_LIMIT``) to remember the ids it names before the client sees
it; a list is not remembered (on a shared account it is filtered, parsed
off the event loop when large); the body of a chat completion, and of a job
created on a shared account, is read to check what it names. Each routed
request is one log line on ``openft.gateway`` with account, route, status
and latency, and the answer carries ``openft-provider-account``.

**Bounds.** Each wait on the upstream, and on a client taking the next
piece of an answer, is bounded by the account's ``timeout_seconds``; the
whole request by its ``deadline_seconds``; a client that leaves stops the
upstream request at once.
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
from openft.errors import BadGateway, GatewayTimeout, InvalidRequest, NotFound, OpenFTError
from openft.gateway.accounts import ProviderAccount
from openft.gateway.forward import Outbound, UpstreamResponse, held_objects
from openft.store.queries import orgs, routes

log = logging.getLogger("openft.gateway")

PREFIXES = ("/v1", GATEWAY_PREFIX)
CHAT = "/chat/completions"
JOBS = "/fine_tuning/jobs"
LISTS = ("/files", JOBS)
HEADER = "x-tfy-provider-name"
ACCOUNT_HEADER = "openft-provider-account"
REMEMBER_LIMIT = 8 * 1024 * 1024
PARSE_ON_LOOP_LIMIT = 64 * 1024
"""A JSON answer larger than this is parsed on a worker thread, not the event loop."""
LOCAL = ""
"""What ``RouteMemory`` holds for an id this deployment answered for itself."""


class ClientLeft(Exception):
    """The client went away, or stopped taking the answer: nothing more is sent."""


def split(path: str) -> tuple[str, str] | None:
    """(prefix, rest) of a routable path: files, fine-tuning, chat completions."""
    for prefix in PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix):]
            if rest in ("/files", CHAT) or rest.startswith(("/files/", "/fine_tuning/")):
                return prefix, rest
    return None


def path_object(rest: str) -> tuple[str, str] | None:
    """(id, type) of the file or job a routable path names, if any."""
    parts = rest.strip("/").split("/")
    if parts[0] == "files" and len(parts) > 1:
        return parts[1], "file"
    if parts[:2] == ["fine_tuning", "jobs"] and len(parts) > 2 and parts[2] != "estimate":
        return parts[2], "fine_tuning_job"
    return None


def route_template(method: str, rest: str) -> str:
    found = path_object(rest)
    return f"{method} {rest.replace('/' + found[0], '/{id}', 1) if found else rest}"


@dataclass(frozen=True)
class Route:
    """Where a routed request goes."""

    name: str
    account: ProviderAccount
    body: bytes | None = None
    """The request body when it was read here (a chat completion, a job on a shared account), else streamed."""


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

    async def accounts_of(self, ctx: AppContext, org_id: str, object_ids: list[str]) -> dict[str, str]:
        """Where each of ``object_ids`` lives for ``org_id`` (unknown ones left out)."""
        found = {i: where for i in object_ids if (where := self.get(org_id, i)) is not None}
        missing = [i for i in dict.fromkeys(object_ids) if i not in found]
        if missing:
            async with ctx.reader() as db:
                read = await routes.read_routes(db, org_id, missing)
            for object_id, where in read.items():
                self.put(org_id, object_id, where)
            found.update(read)
        return found


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

    async def account(self, ctx: AppContext, name: str, org_id: str) -> ProviderAccount:
        """The account ``name`` if this organisation may use it: unknown is a 400, not allowed a 404."""
        account = ctx.providers.get(name)
        org_name = await self.org_name(ctx, org_id)
        if account is None:
            usable = ", ".join(ctx.providers.usable(org_id, org_name))
            raise InvalidRequest(f"Unknown provider account {name[:64]!r} in the {HEADER} header; "
                                 f"this organisation may use: {usable}.", param=HEADER, code="unknown_provider")
        if not account.allows(org_id, org_name):
            raise NotFound("provider_account", name, param=HEADER)
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
        org_id, rest = principal.org_id, parts[1]
        try:
            metadata = tfy_metadata(headers.get("x-tfy-metadata"))
            route, receive = await self._choose(ctx, scope, receive, rest, org_id, headers)
        except OpenFTError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except ClientLeft:
            return
        except HTTPException as exc:  # the body limit's 413 or 408, raised while a body was read here
            response = envelope(exc.status_code, str(exc.detail), code=getattr(exc, "code", None),
                                headers={"connection": "close"})
            await response(scope, receive, send)
            return
        if route is not None:
            await Forwarding(ctx, scope, receive, send, route, org_id, rest, metadata, self.memory).run()
            return
        target = path_object(rest)
        if target is None or self.memory.get(org_id, target[0]) == LOCAL:
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, self._noting_local(send, org_id, target[0]))

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
        method = scope["method"]
        if rest == CHAT and method == "POST":
            return await self._choose_chat(ctx, receive, org_id, named)
        target = path_object(rest)
        if named is not None:
            account = await self.account(ctx, named, org_id)
            if not account.upstream:
                return None, receive
            if account.shared and target is not None:
                await self._owned(ctx, org_id, named, target[0], target[1], param=None)
            if account.shared and rest == JOBS and method == "POST":
                return await self._checked_job(ctx, receive, org_id, named, account)
            return Route(named, account), receive
        if target is None:
            return None, receive
        found = (await self.memory.accounts_of(ctx, org_id, [target[0]])).get(target[0])
        if not found:  # unknown here, or this deployment's
            return None, receive
        account = ctx.providers.get(found)
        if account is None or not account.upstream or not account.allows(org_id, await self.org_name(ctx, org_id)):
            raise NotFound("provider_account", found, param=None)
        return Route(found, account), receive

    async def _owned(self, ctx: AppContext, org_id: str, name: str, object_id: str, kind: str,
                     param: str | None) -> None:
        """On a shared account, a 404 for what this organisation did not make or get through the gateway."""
        if (await self.memory.accounts_of(ctx, org_id, [object_id])).get(object_id) != name:
            raise NotFound(kind, object_id[:256], param=param)

    async def _checked_job(self, ctx: AppContext, receive: Receive, org_id: str, name: str,
                           account: ProviderAccount) -> tuple[Route, Receive]:
        """A job created on a shared account may name only this organisation's files and fine-tuned models."""
        body = await read_body(receive)
        document = _json_object(body)
        if document is not None:
            for field in ("training_file", "validation_file"):
                if isinstance(document.get(field), str):
                    await self._owned(ctx, org_id, name, document[field], "file", param=field)
            if isinstance(model := document.get("model"), str) and model.startswith("ft:"):
                await self._owned(ctx, org_id, name, model, "model", param="model")
        return Route(name, account, body), replaying(body, receive)

    async def _choose_chat(self, ctx: AppContext, receive: Receive, org_id: str, named: str | None
                           ) -> tuple[Route | None, Receive]:
        body = await read_body(receive)
        replay = replaying(body, receive)
        document = _json_object(body)
        model = document.get("model") if document is not None else None
        if document is None or not isinstance(model, str):
            if named is None:
                return None, replay  # the route answers with its 400
            account = await self.account(ctx, named, org_id)
            return (Route(named, account, body) if account.upstream else None), replay
        if named is None:
            name, _, upstream_model = model.partition("/")
            account = ctx.providers.get(name) if upstream_model else None
            # A prefix that is no account this organisation may use is part of a model name here.
            if account is None or not account.upstream or not account.allows(org_id, await self.org_name(ctx, org_id)):
                return None, replay
        else:
            name, account = named, await self.account(ctx, named, org_id)
            if not account.upstream:
                return None, replay
            upstream_model = model.removeprefix(f"{named}/")
        if account.shared and upstream_model.startswith("ft:"):
            await self._owned(ctx, org_id, name, upstream_model, "model", param="model")
        document["model"] = upstream_model
        return Route(name, account, json.dumps(document).encode()), replay


def _json_object(body: bytes) -> dict[str, object] | None:
    """The body as a JSON object, or None (not JSON, not an object, NaN or Infinity in it)."""
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        document = json.loads(body, parse_constant=refuse)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientLeft()
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
        self.http_status = 0
        self.sent_bytes = 0
        self.first_byte: float | None = None
        self.outcome = ""
        """What the log says beyond the status: 'client-gone', 'cut' (ended mid-answer)."""

    async def run(self) -> None:
        begun = time.monotonic()
        failed: OpenFTError | HTTPException | None = None
        account = self.route.account
        try:
            try:
                async with self.ctx.gateway_capacity.slot(self.org_id), anyio.create_task_group() as group:
                    group.start_soon(self._stop_when_the_client_leaves, group.cancel_scope)
                    try:
                        with anyio.fail_after(account.deadline_seconds):
                            await self._exchange()
                    except TimeoutError:
                        failed = GatewayTimeout(f"Provider account '{self.route.name}' did not finish within "
                                                f"{account.deadline_seconds:g} s.", code="provider_timeout")
                    except (OpenFTError, HTTPException) as exc:  # HTTPException: the body stalled or passed a cap
                        failed = exc
                    except ClientLeft:
                        self.outcome = "client-gone"
                    finally:
                        group.cancel_scope.cancel()
            except OpenFTError as exc:  # no capacity left
                failed = exc
            if failed is not None:
                await self._fail(failed)
        finally:
            total = (time.monotonic() - begun) * 1000
            first = (self.first_byte - begun) * 1000 if self.first_byte else total
            log.info("routed account=%s route=%r status=%s%s first_byte_ms=%.0f total_ms=%.0f bytes=%d org=%s "
                     "request_id=%s metadata=%s", self.route.name, route_template(self.scope["method"], self.rest),
                     self.http_status or "-", f" ({self.outcome})" if self.outcome else "", first, total,
                     self.sent_bytes, self.org_id, self.scope.get("openft.request_id"),
                     json.dumps(self.metadata) if self.metadata else "-")

    async def _fail(self, failed: OpenFTError | HTTPException) -> None:
        if self.started:  # mid-answer: the connection ends without finishing the body
            self.outcome = f"cut: {failed.status_code}"
            return
        self.http_status = failed.status_code
        if isinstance(failed, OpenFTError):
            response = error_response(failed)
        else:
            response = envelope(failed.status_code, str(failed.detail), code=getattr(failed, "code", None),
                                headers={"connection": "close"})
        response.headers[ACCOUNT_HEADER] = self.route.name
        await response(self.scope, self.receive, self.send)

    async def _stop_when_the_client_leaves(self, scope: anyio.CancelScope) -> None:
        await self.body_sent.wait()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.outcome = "client-gone"
                scope.cancel()
                return

    async def _client_body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ClientLeft()  # the upstream must not take a cut body for a whole one
            yield message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.body_sent.set()

    def _has_body(self) -> bool:
        headers = self.scope["headers"]
        return any((k == b"content-length" and v != b"0") or k == b"transfer-encoding" for k, v in headers)

    async def _exchange(self) -> None:
        headers = Headers(scope=self.scope)
        body: bytes | AsyncIterator[bytes]
        if self.route.body is not None:
            body = self.route.body
            headers_out = {k: v for k, v in headers.items() if k != "content-length"}
            self.body_sent.set()
        elif self._has_body():
            body = self._client_body()
            headers_out = dict(headers.items())
        else:
            body = b""
            headers_out = {k: v for k, v in headers.items() if k != "content-length"}
            self.body_sent.set()
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
        headers = answer.headers
        is_list = self.rest in LISTS and self.scope["method"] == "GET"
        if answer.is_json and self.rest != CHAT and not (is_list and not self.route.account.shared):
            held, complete = await _read_up_to(chunks, REMEMBER_LIMIT)
            if not complete and is_list:  # a shared account's list must be filtered: too large to hold
                raise BadGateway(f"The list from provider account '{self.route.name}' is larger than "
                                 f"{REMEMBER_LIMIT} bytes; ask for fewer with 'limit'.", code="provider_list_too_large")
            if complete:
                document = await _parse(b"".join(held))
                if is_list and document is not None:
                    held = [await self._own_items(document)]
                    headers = [(k, v) for k, v in headers if k != "content-length"]
                elif document is not None:
                    await self._remember(document)
        response_headers = [(k.encode(), v.encode("latin-1")) for k, v in headers]
        response_headers.append((ACCOUNT_HEADER.encode(), self.route.name.encode()))
        if answer.upstream_request_id and answer.upstream_request_id.isascii():
            response_headers.append((b"openft-upstream-request-id", answer.upstream_request_id.encode()))
        self.first_byte = time.monotonic()
        await self._send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        self.started, self.http_status = True, answer.status
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
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, message: Message) -> None:
        """Send to the client, which must take each piece within the account's timeout."""
        try:
            with anyio.fail_after(self.route.account.timeout_seconds):
                await self.send(message)
        except (TimeoutError, OSError):
            raise ClientLeft() from None

    async def _body(self, chunk: bytes) -> None:
        if chunk:
            self.sent_bytes += len(chunk)
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _remember(self, document: object) -> None:
        name = self.route.name
        found = [(object_id, kind) for object_id, kind in dict.fromkeys(held_objects(document))
                 if self.memory.get(self.org_id, object_id) != name][:1000]  # known: no write
        if found:
            async with self.ctx.transaction() as session:
                await routes.remember_routes(session, self.org_id, name, found, self.metadata)
            for object_id, _ in found:
                self.memory.put(self.org_id, object_id, name)

    async def _own_items(self, document: object) -> bytes:
        """A shared account's list with only this organisation's objects."""
        assert isinstance(document, dict)
        items = document.get("data") if isinstance(document.get("data"), list) else []
        ids = [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
        mine = await self.memory.accounts_of(self.ctx, self.org_id, ids)
        document["data"] = [item for item in items if isinstance(item, dict)
                            and mine.get(item.get("id")) == self.route.name]  # type: ignore[arg-type]
        if document["data"] and "first_id" in document:
            document["first_id"], document["last_id"] = document["data"][0]["id"], document["data"][-1]["id"]
        return await anyio.to_thread.run_sync(lambda: json.dumps(document).encode())


async def _parse(body: bytes) -> object | None:
    """A JSON answer, parsed off the event loop when it is large; None if it is not JSON."""
    def parse() -> object | None:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return None

    return parse() if len(body) <= PARSE_ON_LOOP_LIMIT else await anyio.to_thread.run_sync(parse)


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
