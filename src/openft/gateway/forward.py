"""One request to a provider account, and what comes back, as a gateway gives it.

``Upstreams.open`` sends a request (its body streamed from the client, or
bytes) to an account with the account's own key and timeouts, and returns
the upstream's answer still streaming. What the client sees of a failure is
decided here: the upstream's own 4xx in the OpenAI envelope with its
message, type, param and code (``UpstreamError``); a refused gateway key, a
5xx, a dropped connection as a 502 naming the account; a wait past the
account's timeout as a 504. Never the URL, never the key: a message that
holds the key (an upstream that echoes it) is scrubbed.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

import httpx

from openft.errors import BadGateway, GatewayTimeout, InvalidRequest, OpenFTError, UpstreamError
from openft.gateway.accounts import CredentialMissing, ProviderAccount
from openft.gateway.memory import ObjectRef

SEGMENT = re.compile(r"[A-Za-z0-9_.:~-]{1,256}")
"""What a path segment sent upstream may hold (ids such as ``ft:model:org::id``); ``.`` and ``..`` never."""
REQUEST_HEADERS = ("content-type", "content-length", "accept", "idempotency-key", "openai-beta", "user-agent",
                   "x-tfy-metadata")
"""The client's headers an upstream sees (when they are plain ASCII); never its key, cookies or host."""
RESPONSE_HEADERS = ("content-type", "content-length", "content-encoding", "content-disposition", "retry-after",
                    "cache-control")
MODEL_ID = re.compile(r"[!-~]{1,256}")
"""A model id an upstream names (``ft:base/name:org:suffix:id``, a checkpoint's): printable ASCII, no spaces."""
ERROR_BODY_LIMIT = 64 * 1024
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Outbound:
    """What goes upstream: the method, the path after the API prefix, the
    query string, the client's headers (filtered here) and its body: bytes
    (read by the gateway, or none) or the client's stream."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes | AsyncIterator[bytes]


def upstream_path(path: str) -> str:
    """``path`` with every segment checked and percent-encoded; a segment that
    could change where the request lands (``..``, odd characters) is a 400."""
    segments = path.strip("/").split("/")
    for segment in segments:
        if not SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise InvalidRequest(f"Invalid path segment {segment[:80]!r} for a routed request.", param="path",
                              code="invalid_path")
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def upstream_query(query: str) -> str:
    """The query string decoded and encoded again (nothing raw reaches the upstream URL)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(pairs)


def scrub(text: str, secret: str) -> str:
    return text.replace(secret, REDACTED) if secret else text


@dataclass
class UpstreamResponse:
    """An upstream's 2xx answer, its body not yet read."""

    status: int
    headers: list[tuple[str, str]]
    upstream_request_id: str | None
    _response: httpx.Response
    _name: str
    _account: ProviderAccount

    @property
    def is_json(self) -> bool:
        return any(k == "content-type" and v.startswith("application/json") for k, v in self.headers)

    @property
    def is_event_stream(self) -> bool:
        return any(k == "content-type" and v.startswith("text/event-stream") for k, v in self.headers)

    _body: AsyncIterator[bytes] | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one iterator however often asked (a reader may stop and another go on);
        a failure part way is a BadGateway or GatewayTimeout."""
        if self._body is None:
            self._body = self._read()
        return self._body

    async def _read(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException:
            raise _timed_out(self._name, self._account) from None
        except httpx.HTTPError:
            raise BadGateway(f"Provider account '{self._name}' dropped the connection mid-answer.",
                             code="provider_unreachable") from None

    async def aclose(self) -> None:
        await self._response.aclose()


def _timed_out(name: str, account: ProviderAccount) -> GatewayTimeout:
    return GatewayTimeout(f"Provider account '{name}' did not answer within {account.timeout_seconds:g} s.",
                          code="provider_timeout")


class Upstreams:
    """The gateway's HTTP client, shared by every account (pooled connections)."""

    def __init__(self, *, max_connections: int = 256):
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=32),
            follow_redirects=False, trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open(self, name: str, account: ProviderAccount, outbound: Outbound) -> UpstreamResponse:
        """Send ``outbound`` to the account; its 2xx/3xx answer, else the error a client should see."""
        assert account.base_url is not None
        try:
            key = account.credential()
        except CredentialMissing:
            raise BadGateway(f"Provider account '{name}' is not usable now: the gateway has no key for it.",
                             code="provider_misconfigured") from None
        url = account.base_url.rstrip("/") + upstream_path(outbound.path)
        query = upstream_query(outbound.query)
        framing = ("content-length",) if isinstance(outbound.body, bytes) else ()  # httpx frames what it holds
        headers = {k: v for k, v in outbound.headers.items()
                   if k in REQUEST_HEADERS and k not in framing and _plain(v)}
        headers.update({"authorization": f"Bearer {key}", "accept-encoding": "identity"})
        timeout = httpx.Timeout(account.timeout_seconds, connect=account.connect_timeout_seconds)
        request = self._client.build_request(outbound.method, url + (f"?{query}" if query else ""),
                                             headers=headers, content=outbound.body, timeout=timeout)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise _timed_out(name, account) from None
        except httpx.HTTPError:
            raise BadGateway(f"Provider account '{name}' could not be reached.", code="provider_unreachable") from None
        if 300 <= response.status_code < 400:  # not followed: it could name any address
            await response.aclose()
            raise BadGateway(f"Provider account '{name}' answered with a redirect (HTTP {response.status_code}); "
                             "the operator must fix the account's base URL.", code="provider_error")
        if response.status_code < 300:
            return UpstreamResponse(
                status=response.status_code,
                # Raw bytes read as Latin-1 go back out byte for byte (a UTF-8 file name included).
                headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw
                         if k.decode("latin-1").lower() in RESPONSE_HEADERS],
                upstream_request_id=response.headers.get("x-request-id"),
                _response=response, _name=name, _account=account,
            )
        try:
            body = await _bounded_read(response, ERROR_BODY_LIMIT)
        except httpx.TimeoutException:
            raise _timed_out(name, account) from None
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
        raise failure(name, response.status_code, body, key, response.headers.get("x-request-id"),
                      retry_after=response.headers.get("retry-after"))


async def _bounded_read(response: httpx.Response, limit: int) -> bytes:
    held = bytearray()
    async for chunk in response.aiter_raw():
        held.extend(chunk[: limit - len(held)])
        if len(held) >= limit:
            break
    return bytes(held)


def _plain(value: str) -> bool:
    """A header value an HTTP/1.1 request line may carry as is (visible ASCII and spaces)."""
    return value.isascii() and value.isprintable()


def failure(name: str, status: int, body: bytes, key: str, upstream_request_id: str | None,
            retry_after: str | None = None) -> OpenFTError:
    """What a client sees of an upstream's error answer (see the module's docstring)."""
    reference = f" (its request id: {upstream_request_id})" if upstream_request_id else ""
    if status == 401:
        return BadGateway(f"Provider account '{name}' refused the gateway's key (HTTP 401){reference}; "
                          "the operator must fix the account.", code="provider_auth_failed")
    if status >= 500:
        error = GatewayTimeout if status == 504 else BadGateway
        return error(f"Provider account '{name}' failed with HTTP {status}{reference}.", code="provider_error")
    fields = _error_fields(scrub(body.decode("utf-8", "replace"), key))  # scrubbed whole, before any cut
    message = scrub(str(fields.get("message") or f"Provider account '{name}' answered HTTP {status}."), key)
    return UpstreamError(  # scrubbed again once decoded: JSON may spell the key with \u escapes
        status, message[:4000],
        error_type=scrub(_text(fields.get("type")) or "invalid_request_error", key)[:200],
        param=_cut(_text(fields.get("param")), key), code=_cut(_text(fields.get("code")), key),
        retry_after=retry_after if status == 429 and retry_after and retry_after.isdigit() else None,
    )


def _error_fields(text: str) -> dict[str, object]:
    """The error's fields: OpenAI's envelope, a bare ``message`` or ``detail``, or the text itself."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        text = text.strip()
        return {"message": text[:1000]} if text else {}
    if not isinstance(document, dict):
        return {}
    error = document.get("error")
    if isinstance(error, dict):
        return error
    for name in ("message", "detail", "error"):
        if isinstance(document.get(name), str):
            return {"message": document[name]}
    return {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None if value is None else str(value)


def _cut(value: str | None, key: str) -> str | None:
    return None if value is None else scrub(value, key)[:200]


def held_objects(document: object) -> Iterable[ObjectRef]:
    """(id, type) of what an upstream answer gives: a file, a job with its
    result files and fine-tuned model, a list's checkpoints' models (the
    ``model`` type names what chat may reach on a shared account)."""
    if not isinstance(document, dict):
        return
    items = document.get("data") if document.get("object") == "list" else [document]
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        kind, object_id = item.get("object"), item.get("id")
        if kind == "file" and _is_id(object_id):
            yield ObjectRef(object_id, "file")  # type: ignore[arg-type]
        elif kind == "fine_tuning.job" and _is_id(object_id):
            yield ObjectRef(object_id, "fine_tuning.job")  # type: ignore[arg-type]
            for result in item.get("result_files") or []:
                if _is_id(result):
                    yield ObjectRef(result, "file")
            if _is_model(item.get("fine_tuned_model")):
                yield ObjectRef(item["fine_tuned_model"], "model")
        elif kind == "fine_tuning.job.checkpoint" and _is_model(item.get("fine_tuned_model_checkpoint")):
            yield ObjectRef(item["fine_tuned_model_checkpoint"], "model")


def _is_model(value: object) -> bool:
    return isinstance(value, str) and bool(MODEL_ID.fullmatch(value))


def _is_id(value: object) -> bool:
    return isinstance(value, str) and bool(SEGMENT.fullmatch(value)) and value not in (".", "..")
