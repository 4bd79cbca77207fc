"""Delivering webhook events from the outbox (``webhook_deliveries``).

The :class:`Dispatcher` runs in every ``openft serve`` and ``openft worker``
process. Every ``OPENFT_WEBHOOK_POLL_SECONDS`` it claims deliveries that are
due (``store.queries.webhooks.claim``: one dispatcher per attempt), POSTs
each event's JSON to its endpoint, signed per Standard Webhooks, and records
the outcome: a 2xx is delivered; anything else is retried after an
exponentially growing delay (``OPENFT_WEBHOOK_RETRY_BASE_SECONDS`` doubling,
with jitter, at most ``OPENFT_WEBHOOK_RETRY_MAX_SECONDS``) until
``OPENFT_WEBHOOK_RETRY_HOURS`` after the event, then given up. Deliveries
live in the database, so a restart loses none: at least once.

Signing (Standard Webhooks, as OpenAI signs): ``webhook-id`` is the event's
id (the same on every retry), ``webhook-timestamp`` the send time in
seconds, ``webhook-signature`` ``v1,`` + base64 HMAC-SHA256 of
``{id}.{timestamp}.{body}`` keyed with the base64-decoded ``whsec_`` secret
(two signatures for 24 hours after a rotation that keeps the old secret).

Endpoints must be public: a URL whose host is, or resolves to, a loopback,
private, link-local (cloud metadata), multicast or reserved address is
refused when registered and again before every attempt (a name may resolve
differently later), unless ``OPENFT_WEBHOOKS_ALLOW_PRIVATE=true``. IPv6
addresses that embed an IPv4 address are judged by the one they embed. An
attempt connects to the very address it checked (DNS rebinding cannot swap
in another between the check and the connection), with the URL's host name
in ``Host`` and as the TLS server name (the certificate is verified against
it). Redirects are not followed; proxies from the environment are not used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from openft.config import Settings
from openft.store.queries import webhooks as queries

log = logging.getLogger(__name__)

BATCH = 20
USER_AGENT = "openft-webhooks/1"


class UnsafeURL(ValueError):
    """A webhook URL openft will not send to (the message says why)."""


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (blocking)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the URL as registered, and the address that
    was checked, which is the one connected to (a name that resolves
    differently a moment later changes nothing)."""

    url: str
    address: str | None
    """None when private endpoints are allowed (the name is then resolved as usual)."""

    def request_url(self) -> str:
        if self.address is None:
            return self.url
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))

    def host_header(self) -> str:
        return urlsplit(self.url).netloc.rpartition("@")[2]


def check_url(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> Target:
    """Refuse what is not an http(s) URL to a public address (see the module
    docstring); the target to connect to otherwise. Resolves the host name
    (blocking: call it off the event loop)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeURL(f"its port is not a number ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("must not carry a user name or password")
    if allow_private:
        return Target(url, None)
    try:
        addresses = sorted(set(resolver(parts.hostname, port)))
    except (OSError, ValueError, UnicodeError) as exc:
        raise UnsafeURL(f"its host {parts.hostname!r} does not resolve ({exc})") from exc
    if not addresses:
        raise UnsafeURL(f"its host {parts.hostname!r} does not resolve")
    for address in addresses:
        if not is_public(ipaddress.ip_address(address.split("%", 1)[0])):
            raise UnsafeURL(
                f"its host {parts.hostname!r} is the non-public address {address} (loopback, private, "
                "link-local, multicast or reserved, or an IPv6 address embedding one); set "
                "OPENFT_WEBHOOKS_ALLOW_PRIVATE=true to allow such endpoints"
            )
    return Target(url, addresses[0])


NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address; an IPv6 address that embeds an IPv4 one
    (mapped, compatible, translated, NAT64, 6to4, Teredo) is judged by what
    it embeds, so ``::127.0.0.1`` or ``64:ff9b::a9fe:a9fe`` is not public."""
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return True
    if ip in NAT64_LOCAL:
        return False
    value = int(ip)
    embedded: list[ipaddress.IPv4Address] = []
    if value >> 32 in (0, 0xFFFF, 0xFFFF0000) or ip in NAT64:  # compatible, mapped, translated, NAT64
        embedded.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)
    return all(is_public(v4) for v4 in embedded)


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}`` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets: list[str], body: str, now: float | None = None) -> dict[str, str]:
    message_id = json.loads(body)["id"]
    timestamp = int(now if now is not None else time.time())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, message_id, timestamp, body) for s in secrets),
    }


_JITTER = random.Random()


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random = _JITTER) -> float:
    """Seconds before attempt ``attempts + 1``: base x 2^(attempts - 1), within ±20%, at most ``cap``."""
    return min(cap, base * 2 ** max(0, attempts - 1)) * rng.uniform(0.8, 1.2)


async def post(settings: Settings, url: str, secrets: list[str], body: str,
               resolver: Resolver = resolve) -> tuple[int | None, str | None]:
    """Send one signed event: (HTTP status, error text or None when it was a 2xx).
    The name is resolved and checked once, and the request goes to the checked
    address (with the URL's host in ``Host`` and as the TLS server name)."""
    import httpx

    try:
        target = await asyncio.wait_for(
            asyncio.to_thread(check_url, url, allow_private=settings.webhooks_allow_private, resolver=resolver),
            settings.webhook_timeout_seconds)
    except UnsafeURL as exc:
        return None, f"endpoint refused: {exc}"
    except TimeoutError:
        return None, "endpoint refused: its host name did not resolve in time"
    headers = {**signed_headers(secrets, body), "host": target.host_header()}
    extensions = {"sni_hostname": urlsplit(url).hostname} if target.address is not None else {}
    try:
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False,
                                     trust_env=False) as client:
            response = await client.post(target.request_url(), content=body.encode(), headers=headers,
                                         extensions=extensions)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"


def active_secrets(row: Any, now: datetime) -> list[str]:
    secrets = [row.secret]
    if row.previous_secret and row.previous_secret_expires_at and row.previous_secret_expires_at > now:
        secrets.append(row.previous_secret)
    return secrets


class Dispatcher:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]):
        self.settings, self.sessions = settings, sessions
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                while await self.deliver_due() == BATCH and not self._stopping.is_set():
                    pass
            except Exception:
                log.exception("webhook dispatcher error (retrying)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.webhook_poll_seconds)

    async def deliver_due(self) -> int:
        """Attempt every due delivery (up to a batch), concurrently; returns how many were due."""
        now = datetime.now(UTC)
        async with self.sessions() as session:
            due = await queries.due_deliveries(session, now, BATCH)
        await asyncio.gather(*(self._attempt(row, now) for row in due))
        return len(due)

    async def _attempt(self, row: Any, now: datetime) -> None:
        # Longer than an attempt can take (name check + request, each bounded by the
        # timeout): a dispatcher that dies mid-attempt leaves the delivery to another after it.
        hold = timedelta(seconds=2 * self.settings.webhook_timeout_seconds + 5)
        async with self.sessions() as session, session.begin():
            if not await queries.claim(session, row.id, row.attempts, hold):
                return
        status, error = await post(self.settings, row.url, active_secrets(row, now), row.body)
        attempts = row.attempts + 1
        async with self.sessions() as session, session.begin():
            if error is None:
                await queries.record(session, row.id, status=queries.DELIVERED, error=None)
                log.info("webhook %s delivered to %s (attempt %d)", row.event_type, row.url, attempts)
                return
            delay = retry_delay(attempts, self.settings.webhook_retry_base_seconds,
                                self.settings.webhook_retry_max_seconds)
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            if retry_at - row.created_at > timedelta(hours=self.settings.webhook_retry_hours):
                await queries.record(session, row.id, status=queries.FAILED, error=error)
                log.warning("webhook %s to %s given up after %d attempts: %s", row.event_type, row.url,
                            attempts, error)
                return
            await queries.record(session, row.id, status=queries.PENDING, error=error, next_attempt_at=retry_at)
            log.info("webhook %s to %s failed (attempt %d, retry in %.1f s): %s", row.event_type, row.url,
                     attempts, delay, error)
