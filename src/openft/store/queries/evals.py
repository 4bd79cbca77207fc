"""Evals, eval runs and their output items.

A run is claimed like a job: the conditional update ``queued ->
in_progress`` with the claiming worker's id and a lease (two workers never
claim one run; organisations take turns, :func:`claim_run`), renewed by
heartbeats, re-queued by :func:`requeue_expired_runs` when its worker died.
Every write a worker makes is fenced on its id and the run still being
``in_progress``, and :func:`record_item` writes an item at most once
(``(run_id, datasource_item_id)`` is unique), together with the run's
counters, so a run that resumes neither loses nor double-counts one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from openft.domain import EvalRunStatus
from openft.errors import InvalidRequest
from openft.store.queries.reads import Db, Page, keyset_page, scoped
from openft.store.tables import Eval, EvalOutputItem, EvalRun

IN_PROGRESS = EvalRunStatus.IN_PROGRESS.value
QUEUED = EvalRunStatus.QUEUED.value


# ------------------------------------------------------------------- evals
async def add(session: AsyncSession, row: Eval | EvalRun) -> None:
    session.add(row)
    await session.flush()


async def read_eval(db: Db, org_id: str, eval_id: str) -> Row[Any] | None:
    return (await db.execute(scoped(Eval, org_id=org_id, id=eval_id))).first()


async def list_evals(db: Db, org_id: str, *, after: str | None, limit: int, order: str,
                     order_by: str) -> Page[Any]:
    stmt = scoped(Eval, org_id=org_id)
    if order_by == "created_at":
        return await keyset_page(db, stmt, Eval, after=after, limit=limit, newest_first=order == "desc")
    # updated_at: ordered by (updated_at, seq), the cursor is the pair of the row named by `after`.
    desc = order == "desc"
    if after is not None:
        cursor = (await db.execute(
            select(Eval.updated_at, Eval.seq).where(Eval.org_id == org_id, Eval.id == after))).first()
        if cursor is None:
            raise InvalidRequest(f"No such object for the `after` cursor: {after}", param="after")
        when, seq = cursor
        stmt = stmt.where(or_(Eval.updated_at < when, and_(Eval.updated_at == when, Eval.seq < seq)) if desc
                          else or_(Eval.updated_at > when, and_(Eval.updated_at == when, Eval.seq > seq)))
    keys = (Eval.updated_at.desc(), Eval.seq.desc()) if desc else (Eval.updated_at.asc(), Eval.seq.asc())
    rows = (await db.execute(stmt.order_by(*keys).limit(limit + 1))).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)


async def update_eval(session: AsyncSession, org_id: str, eval_id: str, **values: Any) -> None:
    await session.execute(update(Eval).where(Eval.org_id == org_id, Eval.id == eval_id).values(**values)
                          .execution_options(synchronize_session=False))


async def delete_eval(session: AsyncSession, org_id: str, eval_id: str) -> list[str]:
    """Delete the eval with its runs and their items; the runs' item blob keys."""
    runs = (await session.execute(select(EvalRun.id, EvalRun.items_key).where(EvalRun.eval_id == eval_id,
                                                                             EvalRun.org_id == org_id))).all()
    if runs:
        await session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id.in_([r.id for r in runs])))
        await session.execute(delete(EvalRun).where(EvalRun.id.in_([r.id for r in runs])))
    await session.execute(delete(Eval).where(Eval.org_id == org_id, Eval.id == eval_id))
    return [r.items_key for r in runs]


# -------------------------------------------------------------------- runs
async def read_run(db: Db, org_id: str, eval_id: str, run_id: str) -> Row[Any] | None:
    return (await db.execute(scoped(EvalRun, org_id=org_id, eval_id=eval_id, id=run_id))).first()


async def read_run_any_org(db: Db, run_id: str) -> Row[Any] | None:
    return (await db.execute(scoped(EvalRun, id=run_id))).first()


async def list_runs(db: Db, org_id: str, eval_id: str, *, after: str | None, limit: int, order: str,
                    status: str | None) -> Page[Any]:
    stmt = scoped(EvalRun, org_id=org_id, eval_id=eval_id)
    if status is not None:
        stmt = stmt.where(EvalRun.status == status)
    return await keyset_page(db, stmt, EvalRun, after=after, limit=limit, newest_first=order == "desc")


async def runs_of_models(db: Db, org_id: str, models: list[str], limit: int = 100) -> list[Row[Any]]:
    """The newest runs that sampled one of ``models`` (a job's model and checkpoints)."""
    stmt = scoped(EvalRun, org_id=org_id).where(EvalRun.model.in_(models))
    return list((await db.execute(stmt.order_by(EvalRun.seq.desc()).limit(limit))).all())


async def count_unfinished_runs(db: Db, org_id: str) -> int:
    """The organisation's runs queued or in progress."""
    return int(await db.scalar(select(func.count()).select_from(EvalRun).where(
        EvalRun.org_id == org_id, EvalRun.status.in_([QUEUED, IN_PROGRESS]))) or 0)


async def runs_of_job(db: Db, org_id: str, job_id: str) -> list[Row[Any]]:
    """The runs a job's eval integration queued for its checkpoints."""
    stmt = scoped(EvalRun, org_id=org_id, fine_tuning_job_id=job_id)
    return list((await db.execute(stmt.order_by(EvalRun.seq))).all())


async def cancel_run(session: AsyncSession, org_id: str, run_id: str) -> bool:
    """queued or in_progress -> canceled; False when the run had already ended."""
    now = datetime.now(UTC)
    result = await session.execute(
        update(EvalRun).where(EvalRun.org_id == org_id, EvalRun.id == run_id,
                              EvalRun.status.in_([QUEUED, IN_PROGRESS]))
        .values(status=EvalRunStatus.CANCELED.value, updated_at=now, finished_at=now, lease_expires_at=None)
        .execution_options(synchronize_session=False))
    return result.rowcount > 0


async def delete_run(session: AsyncSession, org_id: str, run_id: str) -> str | None:
    """Delete a run and its items; its item blob key, or None if there was no such run."""
    key = await session.scalar(select(EvalRun.items_key).where(EvalRun.org_id == org_id, EvalRun.id == run_id))
    if key is None:
        return None
    await session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == run_id))
    await session.execute(delete(EvalRun).where(EvalRun.id == run_id))
    return key


# -------------------------------------------------------------- scheduling
async def claim_run(session: AsyncSession, worker_id: str, lease_until: datetime) -> EvalRun | None:
    """The oldest queued run of an organisation with none in progress (else
    of any organisation), now ``in_progress`` and leased to ``worker_id``, or
    None: each organisation's oldest run is a candidate, so one
    organisation's many runs do not hold up another's."""
    oldest = (select(func.min(EvalRun.seq)).where(EvalRun.status == QUEUED).group_by(EvalRun.org_id)
              .scalar_subquery())
    candidates = list((await session.execute(select(EvalRun.id, EvalRun.org_id, EvalRun.seq).where(
        EvalRun.seq.in_(oldest)).order_by(EvalRun.seq))).all())  # each organisation's oldest queued run
    busy = set((await session.scalars(select(EvalRun.org_id).where(EvalRun.status == IN_PROGRESS))).all())
    candidates.sort(key=lambda c: c.org_id in busy)  # stable: oldest first within each group
    for run_id in [c.id for c in candidates]:  # the conditional update decides between concurrent workers
        result = await session.execute(
            update(EvalRun).where(EvalRun.id == run_id, EvalRun.status == QUEUED)
            .values(status=IN_PROGRESS, worker_id=worker_id, lease_expires_at=lease_until,
                    attempts=EvalRun.attempts + 1, updated_at=datetime.now(UTC))
            .execution_options(synchronize_session=False))
        if result.rowcount:
            return await session.get(EvalRun, await session.scalar(select(EvalRun.seq).where(EvalRun.id == run_id)))
    return None


async def hold_run(session: AsyncSession, run_id: str, worker_id: str, **values: Any) -> bool:
    """Write ``values`` to a run ``worker_id`` holds in progress; False (nothing written) otherwise."""
    result = await session.execute(
        update(EvalRun).where(EvalRun.id == run_id, EvalRun.worker_id == worker_id, EvalRun.status == IN_PROGRESS)
        .values(**values).execution_options(synchronize_session=False))
    return result.rowcount > 0


async def requeue_expired_runs(session: AsyncSession, now: datetime,
                               max_attempts: int) -> tuple[list[str], list[str]]:
    """Runs in progress whose lease expired (their worker died) go back to the
    queue, or fail once they have been started ``max_attempts`` times (a run
    that takes its worker down each time must not do so forever): (re-queued, failed)."""
    expired = (await session.execute(select(EvalRun.id, EvalRun.attempts).where(
        EvalRun.status == IN_PROGRESS, EvalRun.lease_expires_at < now))).all()
    for run_id, attempts in expired:
        guard = update(EvalRun).where(EvalRun.id == run_id, EvalRun.status == IN_PROGRESS,
                                      EvalRun.lease_expires_at < now)
        if attempts >= max_attempts:
            values: dict[str, Any] = {"status": EvalRunStatus.FAILED.value, "finished_at": now, "error": {
                "code": "worker_lost", "message": f"The worker running this eval stopped responding on each of "
                                                  f"{attempts} attempts."}}
        else:
            values = {"status": QUEUED, "worker_id": None}
        await session.execute(guard.values(lease_expires_at=None, updated_at=now, **values)
                              .execution_options(synchronize_session=False))
    return ([r for r, attempts in expired if attempts < max_attempts],
            [r for r, attempts in expired if attempts >= max_attempts])


async def release_run(session: AsyncSession, run_id: str, worker_id: str, to: EvalRunStatus,
                      error: dict[str, str] | None = None) -> bool:
    """Move a run ``worker_id`` holds in progress to ``to`` and drop its
    lease (back to the queue: no worker; otherwise finished now)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"updated_at": now, "lease_expires_at": None}
    if to is EvalRunStatus.QUEUED:
        values["worker_id"] = None
    else:
        values["finished_at"] = now
    if error is not None:
        values["error"] = error
    return await hold_run(session, run_id, worker_id, status=to.value, **values)


async def done_item_ids(db: Db, run_id: str) -> list[int]:
    return list((await db.scalars(select(EvalOutputItem.datasource_item_id)
                                  .where(EvalOutputItem.run_id == run_id))).all())


async def record_item(session: AsyncSession, run_id: str, worker_id: str, item: EvalOutputItem,
                      tally: Callable[[EvalRun], dict[str, Any]]) -> bool:
    """Write ``item`` and the run's counters (``tally`` of the locked run row)
    if the worker still holds the run and the item is not there yet."""
    stmt = select(EvalRun).where(EvalRun.id == run_id, EvalRun.worker_id == worker_id,
                                 EvalRun.status == IN_PROGRESS)
    if session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    run = (await session.scalars(stmt)).first()
    if run is None:
        return False
    there = await session.scalar(select(func.count()).select_from(EvalOutputItem).where(
        EvalOutputItem.run_id == run_id, EvalOutputItem.datasource_item_id == item.datasource_item_id))
    if there:
        return False
    session.add(item)
    await session.flush()
    await session.execute(update(EvalRun).where(EvalRun.id == run_id).values(**tally(run))
                          .execution_options(synchronize_session=False))
    return True


# ------------------------------------------------------------ output items
async def list_items(db: Db, run_id: str, *, after: str | None, limit: int, order: str,
                     status: str | None) -> Page[Any]:
    stmt = scoped(EvalOutputItem, run_id=run_id)
    if status is not None:
        stmt = stmt.where(EvalOutputItem.status == status)
    return await keyset_page(db, stmt, EvalOutputItem, after=after, limit=limit, newest_first=order == "desc")


async def read_item(db: Db, run_id: str, item_id: str) -> Row[Any] | None:
    return (await db.execute(scoped(EvalOutputItem, run_id=run_id, id=item_id))).first()
