"""Routing to provider accounts, in front of the API's own routes.

A request under ``/v1`` or ``/api/llm`` to a files or fine-tuning route, or
to chat completions, is sent to a provider account (``openft.gateway``)
when:

- it carries ``x-tfy-provider-name: <account>`` naming an account of kind
  ``openai-compatible`` (an ``openft`` account is this deployment: the
  request goes on to the local routes);
- its path names an id the organisation got from an account earlier (the
  route is remembered per organisation and id, ``openft.gateway.memory``,
  so ``client.files.retrieve`` or ``jobs.retrieve`` work without the header;
  with it, the header wins);
- it is a chat completion whose ``model`` is ``<account>/<model>`` naming an
  account the organisation may use; the upstream sees ``<model>``.

Everything else, and every request while no upstream account is configured
(``OPENFT_PROVIDERS_FILE``), goes on untouched. The caller's own key
authenticates it here first (a refused key goes on to the routes and gets
their 401); the upstream sees the account's key, never the caller's. An
account the organisation may not use is a 404, an unknown name a 400 naming
the header.

**Shared accounts.** All organisations that may use an account reach the
upstream with its one key, so where an account is shared (``*`` or several
organisations) each organisation reaches only what it made or was given
through the gateway: files and jobs it created there, and a job's result
files, fine-tuned model and checkpoints' models once it read them. Another
id is a 404; a job (or estimate) naming another's file or ``ft:`` model is a
404 at that field; a list shows its own objects only; chat with an ``ft:``
model it was not given is a 404; and only the routes that can be checked so
are routed (files, jobs and their parts, estimates, a checkpoint's
permissions): any other is a 400. An account with exactly one organisation
is that organisation's whole.

**What is read here.** Bodies stream both ways (uploads, downloads, chat
streams). The JSON answer of a create, retrieve or action is read whole (up
to ``REMEMBER_LIMIT``) to remember the ids it names before the client sees
it; a list is not remembered (on a shared account it is filtered, parsed
off the event loop when large); the body of a chat completion, and of a job
created on a shared account, is read (within ``OPENFT_MAX_REQUEST_BYTES``)
to check what it names. Each routed request is one log line on
``openft.gateway`` with account, route, status and latency, and the answer
carries ``openft-provider-account``.

**Bounds.** At most ``OPENFT_GATEWAY_CONCURRENCY`` routed requests at once
(``..._PER_ORG`` for one organisation). Each wait on the upstream, and on a
client taking the next piece of an answer, is bounded by the account's
``timeout_seconds``; the whole request by its ``deadline_seconds``. A client
that leaves stops the upstream request at once; a failure after the answer
started ends the connection (a chat stream gets an error event and
``[DONE]`` first).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.api.context import AppContext
from openft.api.deps import GATEWAY_PREFIX, tfy_metadata
from openft.api.errors import error_response, http_exception_response
from openft.api.routing import strict_json
from openft.errors import BadGateway, GatewayTimeout, InvalidRequest, NotFound, OpenFTError, error_body
from openft.gateway.accounts import HEADER, ProviderAccount
from openft.gateway.forward import Outbound, UpstreamResponse, held_objects
from openft.gateway.memory import ObjectRef, RouteMemory

log = logging.getLogger("openft.gateway")

PREFIXES = ("/v1", GATEWAY_PREFIX)
CHAT = "/chat/completions"
JOBS = "/fine_tuning/jobs"
ESTIMATE = "/fine_tuning/jobs/estimate"
LISTS = ("/files", JOBS)
SHARED_WITHOUT_ID = ("/files", JOBS, ESTIMATE)
"""Routes without an id in their path that a shared account takes (lists are filtered, bodies checked)."""
ACCOUNT_HEADER = "openft-provider-account"
REMEMBER_LIMIT = 8 * 1024 * 1024
PARSE_ON_LOOP_LIMIT = 64 * 1024
"""A JSON answer larger than this is parsed on a worker thread, not the event loop."""


ROUTED_METHODS = ("GET", "POST", "DELETE")
"""What the files and fine-tuning API uses; nothing else (TRACE, say) is sent to an upstream."""


class MethodNotRouted(OpenFTError):
    status_code = 405


class ClientLeft(Exception):
    """The client went away, or stopped taking the answer: nothing more is sent."""


def routable_path(path: str) -> str | None:
    """The part after the API prefix of a path the gateway may route (files, fine-tuning, chat), else None."""
    for prefix in PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix):]
            if rest in ("/files", CHAT) or rest.startswith(("/files/", "/fine_tuning/")):
                return rest
    return None


def named_object(rest: str) -> ObjectRef | None:
    """The file, job or checkpoint model a routable path names, if any."""
    parts = rest.strip("/").split("/")
    if parts[0] == "files" and len(parts) > 1:
        return ObjectRef(parts[1], "file")
    if parts[:2] == ["fine_tuning", "jobs"] and len(parts) > 2 and parts[2] != "estimate":
        return ObjectRef(parts[2], "fine_tuning.job")
    if parts[:2] == ["fine_tuning", "checkpoints"] and "permissions" in parts[3:]:
        # The checkpoint's model id may hold slashes (ft:org/base:...): it runs up to "permissions".
        end = len(parts) - 1 - parts[::-1].index("permissions") if parts[-1] == "permissions" else len(parts) - 2
        return ObjectRef("/".join(parts[2:end]), "model")
    return None


def route_template(method: str, rest: str) -> str:
    found = named_object(rest)
    return f"{method} {rest.replace('/' + found.id, '/{id}', 1) if found else rest}"


def _not_found(ref: ObjectRef, param: str | None) -> NotFound:
    return NotFound(ref.kind.replace(".", "_"), ref.id[:256], param=param)


@dataclass(frozen=True)
class Route:
    """Where a routed request goes, and its body when it was read here (else it streams from the client)."""

    account_name: str
    account: ProviderAccount
    read_body: bytes | None = None


class GatewayMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app
        self.memory = RouteMemory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rest = routable_path(scope["path"]) if scope["type"] == "http" else None
        ctx: AppContext | None = getattr(scope["app"].state, "ctx", None) if rest else None
        if rest is None or ctx is None or not ctx.providers.upstream_names():
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            assert ctx.authenticator is not None
            principal = await ctx.authenticator.authenticate(headers.get("authorization"))
        except OpenFTError:
            await self.app(scope, receive, send)  # the route answers with its 401
            return
        org_id = principal.org_id
        try:
            metadata = tfy_metadata(headers.get("x-tfy-metadata"))
            route, receive = await Choice(ctx, self.memory, scope, receive, rest, org_id).make()
        except ClientLeft:
            return
        except OpenFTError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except HTTPException as exc:  # the body limit's 413 or 408, a body that is not strict JSON
            await http_exception_response(exc)(scope, receive, send)
            return
        if route is not None:
            await Forwarding(ctx, scope, receive, send, route, org_id, rest, metadata, self.memory).run()
            return
        target = named_object(rest)
        if target is None or self.memory.is_local(org_id, target.id):
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, self._noting_local(send, org_id, target.id))

    def _noting_local(self, send: Send, org_id: str, object_id: str) -> Send:
        """``send``, remembering ``object_id`` as local once this deployment answers it with a 2xx."""
        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.memory.mark_local(org_id, object_id)
            await send(message)

        return noting


class Choice:
    """The route of one request (None: this deployment), and the ``receive``
    the next layer reads its body from (a body read here is replayed)."""

    def __init__(self, ctx: AppContext, memory: RouteMemory, scope: Scope, receive: Receive, rest: str,
                 org_id: str):
        self.ctx, self.memory, self.receive, self.rest, self.org_id = ctx, memory, receive, rest, org_id
        self.method = scope["method"]
        self.named = Headers(scope=scope).get(HEADER)

    async def make(self) -> tuple[Route | None, Receive]:
        if self.rest == CHAT and self.method == "POST":
            return await self._chat()
        if self.named is not None:
            return await self._named()
        return await self._remembered(), self.receive

    async def _account(self, name: str) -> ProviderAccount:
        return self.ctx.providers.resolve(name, self.org_id, await self.ctx.org_name(self.org_id))

    async def _usable_upstream(self, name: str) -> ProviderAccount | None:
        """The upstream account ``name`` if this organisation may use it, without saying why not."""
        account = self.ctx.providers.get(name)
        if account is None or not account.upstream:
            return None
        return account if account.allows(self.org_id, await self.ctx.org_name(self.org_id)) else None

    async def _owned(self, name: str, ref: ObjectRef, param: str | None) -> None:
        """On a shared account, a 404 for what this organisation did not make or get through the gateway."""
        if (await self.memory.accounts_of(self.ctx.reader, self.org_id, [ref.id])).get(ref.id) != name:
            raise _not_found(ref, param)

    async def _named(self) -> tuple[Route | None, Receive]:
        assert self.named is not None
        name, account = self.named, await self._account(self.named)
        if not account.upstream:
            return None, self.receive
        if not account.shared:
            return Route(name, account), self.receive
        target = named_object(self.rest)
        if target is not None:
            await self._owned(name, target, param=None)
        elif self.rest not in SHARED_WITHOUT_ID:
            raise InvalidRequest(f"Provider account {name!r} is shared by several organisations, and this route "
                                 "is not routed on a shared account.", param=HEADER, code="provider_not_routable")
        if self.method == "POST" and self.rest in (JOBS, ESTIMATE):
            return await self._checked_job(name, account)
        return Route(name, account), self.receive

    async def _checked_job(self, name: str, account: ProviderAccount) -> tuple[Route, Receive]:
        """A job (or estimate) on a shared account may name only this organisation's files and fine-tuned
        models, wherever in the body (a grader's judge, an eval's data source), and no eval: evals are
        not routed, so whose an eval id is cannot be known here. What goes upstream is what was checked."""
        body = await read_body(self.receive)
        document = _shared_body(body)
        for path, ref in _named_in(document):
            await self._owned(name, ref, param=path)
        for i, integration in enumerate(document.get("integrations") or []):  # type: ignore[arg-type]
            if isinstance(integration, dict) and integration.get("type") == "eval":
                raise InvalidRequest(f"Provider account {name!r} is shared by several organisations: a job on it "
                                     "cannot carry an eval integration.", param=f"integrations.{i}",
                                     code="provider_not_routable")
        return Route(name, account, _rewritten(document)), replaying(body, self.receive)

    async def _chat(self) -> tuple[Route | None, Receive]:
        body = await read_body(self.receive)
        replay = replaying(body, self.receive)
        document = _json_object(body)
        model = document.get("model") if document is not None else None
        if document is None or not isinstance(model, str):
            if self.named is None:
                return None, replay  # the route answers with its 400
            account = await self._account(self.named)
            if account.upstream and account.shared:
                _shared_body(body)  # a 400: what a body names must be read to be checked
            return (Route(self.named, account, body) if account.upstream else None), replay
        if self.named is None:
            name, _, upstream_model = model.partition("/")
            # A prefix that is no account this organisation may use is part of a model name here.
            found = await self._usable_upstream(name) if upstream_model else None
            if found is None:
                return None, replay
            account = found
        else:
            name, account = self.named, await self._account(self.named)
            if not account.upstream:
                return None, replay
            upstream_model = model.removeprefix(f"{name}/")
        if account.shared and "ft:" in upstream_model:
            await self._owned(name, ObjectRef(upstream_model, "model"), param="model")
        document["model"] = upstream_model
        return Route(name, account, _rewritten(document)), replay

    async def _remembered(self) -> Route | None:
        target = named_object(self.rest)
        if target is None:
            return None
        found = (await self.memory.accounts_of(self.ctx.reader, self.org_id, [target.id])).get(target.id)
        if found is None:
            return None  # unknown here, or this deployment's
        account = await self._usable_upstream(found)
        if account is None:  # removed from the providers file, or no longer allowed
            raise NotFound("provider_account", found, param=None)
        return Route(found, account)


def _json_object(body: bytes) -> dict[str, object] | None:
    """The body as a JSON object, or None when it is not one (the upstream or route answers it);
    a body no route would take (a lone surrogate, nesting past the parser) is a 400."""
    try:
        document = strict_json(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _shared_body(body: bytes) -> dict[str, object]:
    """A body for a shared account: it must be a JSON object, or what it names could not be checked."""
    document = _json_object(body)
    if document is None:
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return document


FILE_FIELDS = ("training_file", "validation_file", "file_id")


def _named_in(node: object, path: str = "") -> list[tuple[str, ObjectRef]]:
    """Every file and fine-tuned model a request body names, with where (``method.reinforcement.grader.model``)."""
    found: list[tuple[str, ObjectRef]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in FILE_FIELDS and isinstance(value, str):
                found.append((where, ObjectRef(value, "file")))
            elif key == "model" and isinstance(value, str) and "ft:" in value:
                found.append((where, ObjectRef(value, "model")))
            else:
                found.extend(_named_in(value, where))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_named_in(value, f"{path}.{i}"))
    return found


def _rewritten(document: dict[str, object]) -> bytes:
    try:
        return json.dumps(document, allow_nan=False).encode()
    except ValueError:
        raise InvalidRequest("The JSON body holds NaN or Infinity, which JSON does not have.") from None


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientLeft()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
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
        self.finished = False
        self.event_stream = False
        self.http_status = 0
        self.sent_bytes = 0
        self.first_byte: float | None = None
        self.outcome = ""
        """What the log says beyond the status: 'client-gone', 'cut: <status>' (ended mid-answer)."""

    async def run(self) -> None:
        begun = time.monotonic()
        failed: OpenFTError | HTTPException | None = None
        account, name = self.route.account, self.route.account_name
        try:
            try:
                async with self.ctx.gateway_capacity.slot(self.org_id), anyio.create_task_group() as group:
                    group.start_soon(self._stop_when_the_client_leaves, group.cancel_scope)
                    try:
                        with anyio.fail_after(account.deadline_seconds):
                            await self._exchange()
                    except TimeoutError:
                        failed = GatewayTimeout(f"Provider account '{name}' did not finish within "
                                                f"{account.deadline_seconds:g} s.", code="provider_timeout")
                    except (OpenFTError, HTTPException) as exc:  # HTTPException: the body stalled or passed a cap
                        failed = exc
                    except ClientLeft:
                        self.outcome = "client-gone"
                    except Exception:  # a bug here must not become a 500 with a trace per request
                        log.exception("routed request to %s failed in the gateway [%s]", name,
                                      self.scope.get("openft.request_id"))
                        failed = BadGateway(f"The request to provider account '{name}' failed in the gateway; "
                                            f"quote request id {self.scope.get('openft.request_id')}.",
                                            code="gateway_error")
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
                     "request_id=%s metadata=%s", name, route_template(self.scope["method"], self.rest),
                     self.http_status or "-", f" ({self.outcome})" if self.outcome else "", first, total,
                     self.sent_bytes, self.org_id, self.scope.get("openft.request_id"),
                     json.dumps(self.metadata) if self.metadata else "-")

    async def _fail(self, failed: OpenFTError | HTTPException) -> None:
        if self.started:
            # Mid-answer: a stream says why and ends; any other body is left unfinished, so the
            # connection closes and a cut download is never taken for a whole one.
            self.outcome = f"cut: {failed.status_code}"
            if self.event_stream and isinstance(failed, OpenFTError):
                event = json.dumps(error_body(failed.message, type=failed.error_type, code=failed.code))
                with anyio.move_on_after(self.route.account.timeout_seconds):
                    await self.send({"type": "http.response.body", "more_body": False,
                                     "body": f"data: {event}\n\ndata: [DONE]\n\n".encode()})
            return
        self.http_status = failed.status_code
        response = error_response(failed) if isinstance(failed, OpenFTError) else http_exception_response(failed)
        response.headers[ACCOUNT_HEADER] = self.route.account_name
        await response(self.scope, self.receive, self.send)

    async def _stop_when_the_client_leaves(self, scope: anyio.CancelScope) -> None:
        await self.body_sent.wait()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.finished:  # the server reports one after every complete answer too
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

    def _client_sends_a_body(self) -> bool:
        headers = self.scope["headers"]
        return any((k == b"content-length" and v != b"0") or k == b"transfer-encoding" for k, v in headers)

    async def _exchange(self) -> None:
        if self.scope["method"] not in ROUTED_METHODS:
            raise MethodNotRouted(f"Method {self.scope['method']} is not routed to provider accounts.")
        body: bytes | AsyncIterator[bytes] = b""
        if self.route.read_body is not None:
            body = self.route.read_body
        elif self._client_sends_a_body():
            body = self._client_body()
        if isinstance(body, bytes):
            self.body_sent.set()
        outbound = Outbound(self.scope["method"], self.rest, self.scope.get("query_string", b"").decode("latin-1"),
                            dict(Headers(scope=self.scope).items()), body)
        answer = await self.ctx.upstreams.open(self.route.account_name, self.route.account, outbound)
        self.body_sent.set()
        try:
            held, headers = await self._inspect(answer)
            await self._stream(answer, held, headers)
        finally:
            await answer.aclose()

    async def _inspect(self, answer: UpstreamResponse) -> tuple[list[bytes], list[tuple[str, str]]]:
        """Before the client sees a JSON answer: its ids remembered, or (a shared account's list) its items
        narrowed to this organisation's. Returns the chunks read and the headers to send."""
        is_list = self.rest in LISTS and self.scope["method"] == "GET"
        narrow = is_list and self.route.account.shared
        if narrow and not answer.is_json:
            raise BadGateway(f"Provider account '{self.route.account_name}' answered a list that is not JSON.",
                             code="provider_error")
        if not answer.is_json or self.rest == CHAT or (is_list and not narrow):
            return [], answer.headers  # streamed through untouched
        held, complete = await _read_up_to(answer.chunks(), REMEMBER_LIMIT)
        if not complete:
            if is_list:  # a shared account's list must be narrowed: too large to hold
                raise BadGateway(f"The list from provider account '{self.route.account_name}' is larger than "
                                 f"{REMEMBER_LIMIT} bytes; ask for fewer with 'limit'.",
                                 code="provider_list_too_large")
            return held, answer.headers
        document = await _parse(b"".join(held))
        if narrow and not isinstance(document, dict):
            raise BadGateway(f"Provider account '{self.route.account_name}' answered a list that is not a JSON "
                             "object.", code="provider_error")
        if document is None:
            return held, answer.headers
        if narrow:
            assert isinstance(document, dict)
            narrowed = await self._own_items(document)
            return [narrowed], [(k, v) for k, v in answer.headers if k != "content-length"]
        # Shielded: once the upstream made an object, a client that leaves must not keep it from being
        # recorded (on a shared account nobody could reach it again).
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await self.memory.remember(self.ctx.transaction, self.org_id, self.route.account_name,
                                       held_objects(document))
        return held, answer.headers

    async def _stream(self, answer: UpstreamResponse, held: list[bytes], headers: list[tuple[str, str]]) -> None:
        response_headers = [(k.encode(), v.encode("latin-1")) for k, v in headers]
        response_headers.append((ACCOUNT_HEADER.encode(), self.route.account_name.encode()))
        if answer.upstream_request_id and answer.upstream_request_id.isascii():
            response_headers.append((b"openft-upstream-request-id", answer.upstream_request_id.encode()))
        self.first_byte = time.monotonic()
        await self._send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        self.started, self.http_status, self.event_stream = True, answer.status, answer.is_event_stream
        for chunk in held:
            await self._body(chunk)
        async for chunk in answer.chunks():
            await self._body(chunk)
        self.finished = True
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

    async def _own_items(self, document: dict[str, object]) -> bytes:
        """A shared account's list with only this organisation's objects (ids and cursors of its own)."""
        items = document.get("data") if isinstance(document.get("data"), list) else []
        ids = [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
        mine = await self.memory.accounts_of(self.ctx.reader, self.org_id, ids)
        kept = [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)
                and mine.get(item["id"]) == self.route.account_name]
        document["data"] = kept
        for cursor, index in (("first_id", 0), ("last_id", -1)):
            if cursor in document:
                document[cursor] = kept[index]["id"] if kept else None
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
