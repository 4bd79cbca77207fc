"""The objects one running API server shares between requests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from openft.api.gate import FairGate
from openft.config import Settings
from openft.gateway.accounts import AccountBook
from openft.gateway.forward import Upstreams
from openft.scheduler.executors.warm import Zygote
from openft.services.auth import Authenticator
from openft.services.capacity import Capacity
from openft.services.chat import ChatService
from openft.services.graders import GraderService
from openft.services.models import ModelRegistry
from openft.store.blobs import BlobStore
from openft.store.queries import orgs


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    """The database engine (SQLAlchemy)."""
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    registry: ModelRegistry
    chat: ChatService
    """Chat completions; it owns the serving generator (openft.serving)."""
    authenticator: Authenticator | None = None  # set at startup, once the default org exists
    gate: FairGate | None = None
    """Admits requests to the database first come, first served (``OPENFT_DB_CONCURRENCY``)."""
    graders: GraderService = field(init=False)
    """The graders API; model graders judge with ``chat``'s generator."""
    exports: Capacity = field(init=False)
    """Merged exports at once, shared fairly between organisations."""
    estimates: Capacity = field(init=False)
    """Job estimates at once, shared fairly between organisations."""
    evals: Capacity = field(init=False)
    """Eval runs' item checks at once, shared fairly between organisations."""
    providers: AccountBook = field(init=False)
    """The provider accounts requests may be routed to (``openft.api.gateway``)."""
    upstreams: Upstreams = field(init=False)
    """The HTTP client that forwards routed requests."""
    gateway_capacity: Capacity = field(init=False)
    """Routed requests at once, shared fairly between organisations."""
    zygote: Zygote | None = None
    """The co-located worker's warm start (set when the worker starts): estimates fork from it."""
    wake_worker: Callable[[], None] = lambda: None
    """Tells the co-located worker a job was queued (a no-op without one)."""

    _org_names: dict[str, str | None] = field(default_factory=dict, init=False)

    async def org_name(self, org_id: str) -> str | None:
        """An organisation's name (provider accounts may list names); names never change, so they are kept."""
        if org_id not in self._org_names:
            async with self.reader() as db:
                name = await orgs.read_org_name(db, org_id)
            if len(self._org_names) > 10_000:
                self._org_names.clear()
            self._org_names[org_id] = name
        return self._org_names[org_id]

    def __post_init__(self) -> None:
        if self.gate is None:
            self.gate = FairGate(self.settings.db_concurrency)
        settings = self.settings
        self.graders = GraderService(settings, self.chat)
        self.exports = Capacity("merged exports", settings.export_concurrency, settings.export_concurrency_per_org)
        self.estimates = Capacity("estimates", settings.estimate_concurrency, settings.estimate_concurrency_per_org)
        self.evals = Capacity("eval item checks", settings.eval_check_concurrency,
                              settings.eval_check_concurrency_per_org)
        self.providers = AccountBook(settings.resolved_providers_file)
        self.upstreams = Upstreams(max_connections=settings.gateway_concurrency)
        self.gateway_capacity = Capacity("routed requests", settings.gateway_concurrency,
                                         settings.gateway_concurrency_per_org)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits if the block succeeds, rolls back otherwise."""
        assert self.gate is not None
        async with self.gate, self.sessions() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for reads: no ORM session, and on PostgreSQL no
        transaction (autocommit), so a one-row read is one round trip."""
        engine = self.engine
        if engine.dialect.name == "postgresql":
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        assert self.gate is not None
        async with self.gate, engine.connect() as connection:
            yield connection
