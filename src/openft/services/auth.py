"""API keys and organisations.

A key is ``sk-openft-`` plus 43 random URL-safe characters; only its SHA-256
is stored (the key has 256 bits of entropy, so a fast hash is enough).
``OPENFT_API_KEY``, when set, is accepted for the default organisation and
never stored. With no key at all, the first start creates one, prints it once
and writes it to ``$OPENFT_HOME/api-key`` (mode 0600). Verified keys are
cached for ``OPENFT_AUTH_CACHE_SECONDS`` so a request costs one database read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from openft.errors import AuthenticationFailed
from openft.store.queries import orgs

KEY_PREFIX = "sk-openft-"


@dataclass(frozen=True)
class Principal:
    """Who is calling: every object they touch is scoped to ``org_id``."""

    org_id: str


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def ensure_org(session: AsyncSession, name: str) -> str:
    """The id of organisation ``name``, created if missing (safe under races)."""
    org = await orgs.read_org_by_name(session, name)
    if org is not None:
        return org.id
    try:
        async with session.begin_nested():
            return (await orgs.create_org(session, name)).id
    except IntegrityError:
        org = await orgs.read_org_by_name(session, name)
        assert org is not None
        return org.id


async def create_key(session: AsyncSession, org_name: str) -> str:
    """A new key for ``org_name`` (created if needed); the clear key is returned once."""
    org_id = await ensure_org(session, org_name)
    key = generate_key()
    await orgs.create_api_key(session, org_id, hash_key(key), key[: len(KEY_PREFIX) + 4])
    return key


async def bootstrap_first_key(session: AsyncSession, org_name: str, key_file: Path) -> str | None:
    """On a database with no key at all, create one and write it to ``key_file``."""
    if await orgs.count_api_keys(session):
        return None
    key = await create_key(session, org_name)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.chmod(key_file, 0o600)
    return key


class Authenticator:
    """Turns a bearer key into a :class:`Principal`, or raises 401."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_seconds: float,
        env_key: str | None = None,
        default_org_id: str | None = None,
    ):
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[str, float]] = {}
        self._env_key_hash = hash_key(env_key) if env_key else None
        self._default_org_id = default_org_id

    async def authenticate(self, authorization: str | None) -> Principal:
        key = _bearer(authorization)
        digest = hash_key(key)
        if self._env_key_hash and hmac.compare_digest(digest, self._env_key_hash):
            assert self._default_org_id is not None
            return Principal(self._default_org_id)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return Principal(cached[0])
        async with self._sessions() as session:
            org_id = await orgs.read_org_id_for_key_hash(session, digest)
        if org_id is None:
            self._cache.pop(digest, None)
            raise AuthenticationFailed(
                f"Incorrect API key provided: {_redact(key)}.", code="invalid_api_key"
            )
        if self._cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (org_id, now + self._cache_seconds)
        return Principal(org_id)


def _bearer(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    return key.strip()


def _redact(key: str) -> str:
    return key[:8] + "*" * 4 + key[-4:] if len(key) > 12 else "*" * len(key)
