"""Organisations and their API keys (stored as SHA-256 hashes)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from openft.domain import new_id
from openft.store.tables import ApiKey, Organization


async def read_org_by_name(session: AsyncSession, name: str) -> Organization | None:
    return await session.scalar(select(Organization).where(Organization.name == name))


async def read_org(session: AsyncSession, org_id: str) -> Organization | None:
    return await session.get(Organization, org_id)


async def read_org_name(db: AsyncSession | AsyncConnection, org_id: str) -> str | None:
    """The organisation's name (a read that works on a plain connection)."""
    return await db.scalar(select(Organization.name).where(Organization.id == org_id))


async def create_org(session: AsyncSession, name: str) -> Organization:
    org = Organization(id=new_id("org"), name=name, created_at=datetime.now(UTC))
    session.add(org)
    await session.flush()
    return org


async def create_api_key(
    session: AsyncSession, org_id: str, key_hash: str, display_prefix: str
) -> ApiKey:
    key = ApiKey(
        id=new_id("key"),
        org_id=org_id,
        key_hash=key_hash,
        display_prefix=display_prefix,
        created_at=datetime.now(UTC),
    )
    session.add(key)
    await session.flush()
    return key


async def read_org_id_for_key_hash(session: AsyncSession, key_hash: str) -> str | None:
    return await session.scalar(select(ApiKey.org_id).where(ApiKey.key_hash == key_hash))


async def count_api_keys(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)
