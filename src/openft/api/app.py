"""``create_app(settings)``: the FastAPI application.

One router serves every resource under both prefixes: ``/v1`` (the OpenAI
SDK's ``base_url``) and ``/api/llm`` (gateway clients). At start-up the
database is migrated and the default organisation and first key ensured.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from openft import __version__, dashboard
from openft.api.context import AppContext
from openft.api.deps import GATEWAY_PREFIX
from openft.api.errors import RequestIdMiddleware, install_error_handlers
from openft.api.gateway import GatewayMiddleware
from openft.api.limits import BodyLimitMiddleware
from openft.api.routers import chat, evals, files, graders, jobs, models, organization, permissions, webhooks
from openft.config import Settings
from openft.services import auth
from openft.services.chat import ChatService
from openft.services.models import ModelRegistry
from openft.store.blobs import BlobStore
from openft.store.db import create_engine, create_session_factory, migrate

log = logging.getLogger("openft")

OPENAI_PREFIX = "/v1"


def build_api_router() -> APIRouter:
    router = APIRouter()
    router.include_router(files.router)
    router.include_router(jobs.router)
    router.include_router(models.router)
    router.include_router(chat.router)
    router.include_router(graders.router)
    router.include_router(webhooks.router)
    router.include_router(evals.router)
    router.include_router(permissions.router)
    router.include_router(organization.router)
    return router


async def start_context(settings: Settings, *, bootstrap_key: bool = True) -> AppContext:
    """Open the database (migrated) and blob store, and set up authentication.
    ``bootstrap_key``: create the first API key if there is none (the server
    does; a standalone worker does not)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    blobs = BlobStore(settings.resolved_storage_url, settings.storage_options)
    await asyncio.to_thread(blobs.check)  # a missing bucket or refused key stops start-up here
    registry = ModelRegistry(settings, blobs)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        blobs=blobs,
        registry=registry,
        chat=ChatService(settings, registry),
    )
    async with ctx.transaction() as session:
        default_org_id = await auth.ensure_org(session, settings.default_org)
        new_key = None
        if settings.api_key is None and bootstrap_key:
            new_key = await auth.bootstrap_first_key(
                session, settings.default_org, settings.api_key_file
            )
    if new_key is not None:
        print(
            f"openft: created the first API key (also written to {settings.api_key_file}):\n"
            f"{new_key}",
            file=sys.stdout,
            flush=True,
        )
    ctx.authenticator = auth.Authenticator(
        ctx.sessions,
        cache_seconds=settings.auth_cache_seconds,
        env_key=settings.api_key.get_secret_value() if settings.api_key else None,
        default_org_id=default_org_id,
    )
    return ctx


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await start_context(settings)
        app.state.ctx = ctx
        # Everything built so far lives as long as the process: keep it out of
        # the cyclic GC's full collections, which otherwise stall requests.
        gc.collect()
        gc.freeze()
        log.info("openft %s ready on %s", __version__, settings.resolved_database_url.split("://")[0])
        from openft.scheduler.webhooks import Dispatcher

        dispatcher = Dispatcher(settings, ctx.sessions)
        dispatcher_task = asyncio.create_task(dispatcher.run(), name="openft webhooks")
        worker_task = None
        if settings.worker:
            from openft.scheduler.worker import Worker

            worker = Worker(settings, ctx.sessions, ctx.blobs, colocated=True)
            ctx.zygote = getattr(worker.executor, "zygote", None)
            ctx.wake_worker = worker.wake
            worker_task = asyncio.create_task(worker.run(), name="openft worker")
        try:
            yield
        finally:
            if worker_task is not None:
                worker.stop()
                await worker_task
            dispatcher.stop()
            await dispatcher_task
            await ctx.upstreams.aclose()
            await ctx.engine.dispose()

    app = FastAPI(title="openft", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(GatewayMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                       idle_seconds=settings.body_timeout_seconds)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/health", tags=["Health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    api = build_api_router()
    app.include_router(api, prefix=OPENAI_PREFIX)
    app.include_router(api, prefix=GATEWAY_PREFIX)
    dashboard.mount(app)
    return app
