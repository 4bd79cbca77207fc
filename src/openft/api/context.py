"""The objects one running API server shares between requests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from openft.config import Settings
from openft.services.auth import Authenticator
from openft.services.models import ModelRegistry
from openft.store.blobs import BlobStore


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    registry: ModelRegistry
    authenticator: Authenticator | None = None  # set at startup, once the default org exists

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits if the block succeeds, rolls back otherwise."""
        async with self.sessions() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (no commit)."""
        async with self.sessions() as session:
            yield session
