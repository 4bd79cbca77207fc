"""The eval runs' queue in the store, on a real database file: claims are
fair between organisations, a run whose worker keeps dying fails after
OPENFT_MAX_ATTEMPTS, an item is recorded once, and a worker that lost its
run writes nothing more."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from openft import domain
from openft.config import load_settings
from openft.domain import EvalRunStatus
from openft.evals import tally
from openft.store.db import create_engine, create_session_factory, migrate
from openft.store.queries import evals as queries
from openft.store.queries import orgs
from openft.store.tables import Eval, EvalOutputItem, EvalRun

pytestmark = pytest.mark.api

CRITERIA = [{"type": "string_check", "name": "x", "id": "x-1", "input": "a", "reference": "a", "operation": "eq"}]


def run_row(org_id: str, eval_id: str) -> EvalRun:
    now = datetime.now(UTC)
    return EvalRun(id=domain.new_id("eval_run"), eval_id=eval_id, org_id=org_id, name="r", model=None,
                   status=EvalRunStatus.QUEUED.value, data_source={}, metadata_=None, items_key="k", total_items=2,
                   error=None, created_at=now, updated_at=now, attempts=0, **tally.empty(CRITERIA))


def item_row(run: EvalRun, index: int) -> EvalOutputItem:
    return EvalOutputItem(id=domain.new_id("eval_output_item"), run_id=run.id, eval_id=run.eval_id,
                          datasource_item_id=index, status="pass", datasource_item={}, results=[], sample={},
                          created_at=datetime.now(UTC))


async def _story(tmp_path: Path) -> dict[str, Any]:
    engine = create_engine(load_settings(home=tmp_path).resolved_database_url)
    sessions = create_session_factory(engine)
    seen: dict[str, Any] = {}
    later = datetime.now(UTC) + timedelta(seconds=30)
    try:
        await migrate(engine)
        async with sessions() as session, session.begin():
            busy, quiet = await orgs.create_org(session, "busy"), await orgs.create_org(session, "quiet")
            evals = {}
            for org in (busy, quiet):
                now = datetime.now(UTC)
                evals[org.id] = Eval(id=domain.new_id("eval"), org_id=org.id, name="e", data_source_config={},
                                     testing_criteria=CRITERIA, metadata_=None, created_at=now, updated_at=now)
                await queries.add(session, evals[org.id])
            # More of the busy organisation's runs than a claim looks at in one go: the quiet one's still comes next.
            runs = [run_row(busy.id, evals[busy.id].id) for _ in range(60)] + [run_row(quiet.id, evals[quiet.id].id)]
            for run in runs:
                await queries.add(session, run)
        claims = []
        for worker in ("w1", "w2"):
            async with sessions() as session, session.begin():
                claims.append((await queries.claim_run(session, worker, later)).org_id)
        seen["claims"] = [("busy" if c == busy.id else "quiet") for c in claims]

        first = runs[0]
        counts = lambda row: tally.add({k: getattr(row, k) for k in (  # noqa: E731
            "result_counts", "per_testing_criteria_results", "per_model_usage")}, "pass", [], {})
        async with sessions() as session, session.begin():
            seen["recorded"] = [await queries.record_item(session, first.id, "w1", item_row(first, 0), counts),
                                await queries.record_item(session, first.id, "w1", item_row(first, 0), counts),
                                await queries.record_item(session, first.id, "w2", item_row(first, 1), counts)]
        async with sessions() as session:
            row = await queries.read_run_any_org(session, first.id)
            seen["total"] = row.result_counts["total"]

        # w1 dies over and over: re-queued, claimed again, and failed once it was started max_attempts times.
        statuses = []
        for _ in range(3):
            async with sessions() as session, session.begin():
                await queries.hold_run(session, first.id, "w1", lease_expires_at=datetime.now(UTC) - timedelta(1))
                await queries.requeue_expired_runs(session, datetime.now(UTC), max_attempts=2)
                statuses.append((await queries.read_run_any_org(session, first.id)).status)
                if statuses[-1] == "queued":
                    await session.execute(  # as claim_run does
                        update(EvalRun).where(EvalRun.id == first.id)
                        .values(status="in_progress", worker_id="w1", attempts=EvalRun.attempts + 1))
        seen["statuses"] = statuses
        async with sessions() as session:
            seen["error"] = (await queries.read_run_any_org(session, first.id)).error
    finally:
        await engine.dispose()
    return seen


def test_the_queue_is_fair_bounded_and_records_each_item_once(tmp_path: Path) -> None:
    seen = asyncio.run(_story(tmp_path))
    assert seen["claims"] == ["busy", "quiet"]  # the quiet organisation's one run is not behind the busy one's 60
    assert seen["recorded"] == [True, False, False]  # a second write of an item, and a stranger's write: nothing
    assert seen["total"] == 1
    assert seen["statuses"][-1] == "failed" and seen["statuses"][0] == "queued", seen
    assert seen["error"]["code"] == "worker_lost"
