"""The store's verbs behave the same on both SQLite adapters: openft's
one-hop adapter (the default, ``openft.store.sqlite``) and SQLAlchemy's stock
aiosqlite one (``OPENFT_SQLITE_DRIVER=aiosqlite``), so the fallback is real.
A server on the stock adapter also serves the API end to end."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

import pytest

from openft.config import load_settings
from openft.domain import JobStatus, Method, MethodType
from openft.errors import Conflict
from openft.store.db import create_engine, create_session_factory, migrate
from openft.store.queries import files as file_queries
from openft.store.queries import jobs as job_queries
from openft.store.queries import orgs as org_queries
from openft.store.tables import File, Job

from support import SMOLLM, Tenant, chat_file

pytestmark = pytest.mark.api


async def _exercise(url: str) -> dict:
    engine = create_engine(url)
    sessions = create_session_factory(engine)
    now = datetime.now(UTC)
    seen: dict = {"dialect": engine.dialect.driver}
    try:
        await migrate(engine)
        async with sessions() as session, session.begin():
            org = await org_queries.create_org(session, "acme")
            await file_queries.create_file(session, File(
                id="file-1", org_id=org.id, filename="t.jsonl", purpose="fine-tune", bytes=3,
                storage_key="k", format="chat", n_examples=12, created_at=now))
            for i in range(3):
                await job_queries.create_job(session, Job(
                    id=f"ftjob-{i}", org_id=org.id, model="m", training_file="file-1",
                    status=JobStatus.VALIDATING_FILES.value, method=Method(MethodType.SUPERVISED), seed=i,
                    metadata_={"team": "a" if i != 1 else "b"}, result_files=[], created_at=now,
                    updated_at=now), event_data=None)
                await job_queries.transition_job(session, f"ftjob-{i}", JobStatus.QUEUED, message="q", action="q")
        async with sessions() as session, session.begin():
            claimed = await job_queries.claim_job(session, "w1", now + timedelta(seconds=30))
            seen["claimed"] = claimed.id if claimed else None
            seen["held"] = await job_queries.hold_job(session, "ftjob-0", "w1", estimated_finish=now)
            seen["held_by_other"] = await job_queries.hold_job(session, "ftjob-0", "w2", estimated_finish=now)
        async with sessions() as session, session.begin():
            try:
                await job_queries.release_job(session, "ftjob-0", "w2", JobStatus.SUCCEEDED, message="x", action="x")
                seen["stolen"] = True
            except Conflict:
                seen["stolen"] = False
        async with sessions() as session, session.begin():
            seen["requeued"] = await job_queries.requeue_expired_jobs(session, now + timedelta(minutes=5), "late")
        async with engine.connect() as conn:
            page = await job_queries.list_jobs(conn, org.id, after=None, limit=10, metadata={"team": "a"})
            seen["team_a"] = [r.id for r in page.items]
            row = await job_queries.read_job(conn, org.id, "ftjob-0")
            seen["status"] = row.status
            seen["file"] = (await file_queries.read_file(conn, org.id, "file-1")).n_examples
    finally:
        await engine.dispose()
    return seen


@pytest.mark.parametrize("driver", ["openft", "aiosqlite"])
def test_store_verbs_on_both_sqlite_adapters(driver: str, tmp_path) -> None:
    settings = load_settings(home=tmp_path, sqlite_driver=driver)
    seen = asyncio.run(_exercise(settings.resolved_database_url))
    assert seen.pop("dialect") == ("openft_aiosqlite" if driver == "openft" else "aiosqlite")
    assert seen == {
        "claimed": "ftjob-0", "held": True, "held_by_other": False, "stolen": False,
        "requeued": ["ftjob-0"], "team_a": ["ftjob-2", "ftjob-0"], "status": "queued", "file": 12,
    }


def test_server_on_the_stock_adapter(make_server) -> None:
    server = make_server("sqlite", OPENFT_SQLITE_DRIVER="aiosqlite")
    tenant = Tenant(server, "default", server.api_key)
    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training, metadata={"k": "v"})
    assert tenant.sdk.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert [j.id for j in tenant.sdk.fine_tuning.jobs.list(metadata={"k": "v"})] == [job.id]
    server.stop()


async def _pause_during_shutdown(url: str) -> list[str]:
    """A running job: the user's resume is refused; the user pauses it; the
    worker, shutting down, tries to give it back as queued; then the user resumes."""
    from openft.services.jobs import apply_user_action

    engine = create_engine(url)
    sessions = create_session_factory(engine)
    now = datetime.now(UTC)
    seen = []

    async def step(name: str, work) -> None:  # noqa: ANN001
        try:
            async with sessions() as session, session.begin():
                job = await work(session)
            seen.append(f"{name}: {job.status}")
        except Conflict:
            seen.append(f"{name}: refused")

    try:
        await migrate(engine)
        async with sessions() as session, session.begin():
            org = await org_queries.create_org(session, "acme")
            await job_queries.create_job(session, Job(
                id="ftjob-p", org_id=org.id, model="m", training_file="file-1",
                status=JobStatus.VALIDATING_FILES.value, method=Method(MethodType.SUPERVISED), seed=0,
                result_files=[], created_at=now, updated_at=now), event_data=None)
            await job_queries.transition_job(session, "ftjob-p", JobStatus.QUEUED, message="q", action="q")
        await step("claim", lambda s: job_queries.claim_job(s, "w1", now + timedelta(seconds=30)))
        await step("resume", lambda s: apply_user_action(s, org.id, "ftjob-p", "resume"))
        await step("pause", lambda s: apply_user_action(s, org.id, "ftjob-p", "pause"))
        await step("worker re-queue", lambda s: job_queries.release_job(
            s, "ftjob-p", "w1", JobStatus.QUEUED, message="The worker shut down", action="re-queue"))
        await step("resume", lambda s: apply_user_action(s, org.id, "ftjob-p", "resume"))
    finally:
        await engine.dispose()
    return seen


def test_a_paused_job_stays_paused_when_its_worker_shuts_down(tmp_path) -> None:
    """Pausing is the user's, resuming too: a worker's shutdown re-queues
    only jobs still running, and resume does not re-queue a running job."""
    assert asyncio.run(_pause_during_shutdown(f"sqlite+openft_aiosqlite:///{tmp_path / 'p.db'}")) == [
        "claim: running", "resume: refused", "pause: paused", "worker re-queue: refused", "resume: queued"]


async def _remembered_routes(url: str) -> tuple[dict[str, str], dict[str, str]]:
    from openft.store.queries import routes

    engine = create_engine(url)
    sessions = create_session_factory(engine)
    try:
        await migrate(engine)
        async with sessions() as session, session.begin():
            org = await org_queries.create_org(session, "acme")
            other = await org_queries.create_org(session, "other")
            await routes.remember_routes(session, org.id, "east", ["file-a", "ftjob-b"])
        async with sessions() as session, session.begin():
            await routes.remember_routes(session, org.id, "east", ["file-a"])  # again: no conflict error
            await routes.remember_routes(session, org.id, "west", ["ftjob-b"])  # the latest account holds it
        async with engine.connect() as conn:
            mine = await routes.read_routes(conn, org.id, ["file-a", "ftjob-b", "file-unknown"])
            theirs = await routes.read_routes(conn, other.id, ["file-a", "ftjob-b"])
    finally:
        await engine.dispose()
    return mine, theirs


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_gateways_remembered_routes_on_both_databases(database: str, tmp_path, postgres_database) -> None:
    url = postgres_database() if database == "postgres" else load_settings(home=tmp_path).resolved_database_url
    mine, theirs = asyncio.run(_remembered_routes(url))
    assert mine == {"file-a": "east", "ftjob-b": "west"} and theirs == {}
