"""Jobs, their events and checkpoints; :func:`transition_job` is the only
writer of ``status`` anywhere in openft."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from openft.domain import JobStatus, new_id, sources_of
from openft.errors import Conflict, NotFound
from openft.store.queries import webhooks as webhook_queries
from openft.store.queries.reads import Db, Page, keyset_page, scoped, select_rows
from openft.store.tables import Checkpoint, Job, JobEvent, JobMetadata


async def create_job(session: AsyncSession, job: Job, *, event_data: dict[str, Any] | None) -> Job:
    """Insert a job in ``validating_files`` with its creation event."""
    if job.status != JobStatus.VALIDATING_FILES.value:
        raise ValueError("a job is created in validating_files")
    session.add(job)
    await session.flush()
    for key, value in (job.metadata_ or {}).items():
        session.add(JobMetadata(job_seq=job.seq, org_id=job.org_id, key=key, value=value))
    await add_event(session, job.id, f"Created fine-tuning job: {job.id}", data=event_data)
    return job


# The hottest read (GET /fine_tuning/jobs/{id}) is built once: constructing a
# select and its cache key costs more than SQLite takes to answer it.
_READ_JOB = select_rows(Job).where(Job.org_id == bindparam("org_id"), Job.id == bindparam("job_id"))


async def read_job(db: Db, org_id: str, job_id: str) -> Row[Any] | None:
    """The job as a read-only row with Job's attribute names, or None."""
    return (await db.execute(_READ_JOB, {"org_id": org_id, "job_id": job_id})).first()


async def list_jobs(
    db: Db,
    org_id: str,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    metadata_is_null: bool = False,
    status: str | None = None,
) -> Page[Row[Any]]:
    """Newest first. A metadata filter is driven by the side table's index
    (org, key, value, job): the first pair walks its index entries newest
    first, each further pair is a primary-key probe, so a page costs the same
    with ten thousand jobs as with millions. ``status`` (an openft extension)
    keeps the jobs in that status."""
    stmt = scoped(Job, org_id=org_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if metadata_is_null:
        stmt = stmt.where(Job.metadata_.is_(None))
    if not metadata:
        return await keyset_page(db, stmt, Job, after=after, limit=limit)
    (key, value), *others = metadata.items()
    first = aliased(JobMetadata)
    stmt = stmt.join(first, first.job_seq == Job.seq).where(
        first.org_id == org_id, first.key == key, first.value == value
    )
    for key, value in others:
        more = aliased(JobMetadata)
        stmt = stmt.join(more, and_(more.job_seq == first.job_seq, more.key == key, more.value == value))
    return await keyset_page(db, stmt, Job, after=after, limit=limit, seq=first.job_seq)


async def transition_job(
    session: AsyncSession,
    job_id: str,
    to: JobStatus,
    *,
    message: str,
    action: str,
    org_id: str | None = None,
    level: str = "info",
    values: dict[str, Any] | None = None,
    guard: list[Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Job:
    """Move a job to ``to`` in one conditional UPDATE, and record ``message``.

    The UPDATE matches only the statuses that may lead to ``to`` (never a
    terminal one), so a late writer cannot overwrite a finished job. Raises
    NotFound if there is no such job (in ``org_id``), Conflict if its status
    (or a ``guard`` condition, such as "this worker still owns it") forbids
    the move.
    """
    now = datetime.now(UTC)
    fields: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
    if to.is_terminal:
        fields.update(finished_at=now, estimated_finish=None)
    stmt = update(Job).where(Job.id == job_id, Job.status.in_([s.value for s in sources_of(to)]))
    if org_id is not None:
        stmt = stmt.where(Job.org_id == org_id)
    if guard:
        stmt = stmt.where(*guard)
    result = await session.execute(
        stmt.values(**fields).execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        job = await _read_any_job(session, job_id, org_id)
        if job is None:
            raise NotFound("fine_tuning_job", job_id)
        raise Conflict(
            f"Cannot {action} fine-tuning job {job_id}: its status is '{job.status}'.",
            code="invalid_job_state",
        )
    await add_event(session, job_id, message, level=level, data=data)
    job = await _read_any_job(session, job_id, org_id, refresh=True)
    assert job is not None
    if to.is_terminal:  # in the same transaction: the event exists exactly when the job ended
        await webhook_queries.enqueue(session, job.org_id, f"fine_tuning.job.{to.value}", job.id)
    return job


async def _read_any_job(
    session: AsyncSession, job_id: str, org_id: str | None, *, refresh: bool = False
) -> Job | None:
    stmt = select(Job).where(Job.id == job_id)
    if org_id is not None:
        stmt = stmt.where(Job.org_id == org_id)
    if refresh:
        stmt = stmt.execution_options(populate_existing=True)
    return await session.scalar(stmt)


async def add_event(
    session: AsyncSession,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(
        id=new_id("event"),
        job_id=job_id,
        created_at=datetime.now(UTC),
        level=level,
        type=type,
        message=message,
        data=data,
    )
    session.add(event)
    await session.flush()
    return event


async def list_events(
    db: Db, job_id: str, *, after: str | None, limit: int
) -> Page[Row[Any]]:
    return await keyset_page(
        db, scoped(JobEvent, job_id=job_id), JobEvent, after=after, limit=limit
    )


async def list_checkpoints(
    db: Db, job_id: str, *, after: str | None, limit: int
) -> Page[Row[Any]]:
    return await keyset_page(
        db, scoped(Checkpoint, job_id=job_id), Checkpoint, after=after, limit=limit
    )


# --------------------------------------------------------------------------- queue verbs
# The scheduler changes jobs only through these (procrastinate's JobManager is
# the model): claim, hold (write while owning), release, requeue expired.

RELEASED = {"worker_id": None, "lease_expires_at": None}
"""The lease fields of a job no worker holds."""


async def claim_job(
    session: AsyncSession,
    worker_id: str,
    lease_until: datetime,
    accepts: Callable[[Job], bool] | None = None,
) -> Job | None:
    """The oldest queued job (that ``accepts`` takes, if given), now ``running``
    and leased to ``worker_id``, or None. On PostgreSQL candidates are locked
    with SKIP LOCKED so concurrent workers look at different rows; the
    conditional transition decides."""
    stmt = select(Job).where(Job.status == JobStatus.QUEUED.value).order_by(Job.seq)
    stmt = stmt.limit(5 if accepts is None else 50)
    if session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    for job in (await session.scalars(stmt)).all():
        if accepts is not None and not accepts(job):
            continue
        try:
            return await transition_job(
                session, job.id, JobStatus.RUNNING, message="Fine-tuning job started", action="start",
                values={"worker_id": worker_id, "lease_expires_at": lease_until, "attempts": Job.attempts + 1},
            )
        except Conflict:
            continue
    return None


async def hold_job(
    session: AsyncSession,
    job_id: str,
    worker_id: str,
    *,
    statuses: tuple[JobStatus, ...] | None = None,
    **values: Any,
) -> bool:
    """Write fields of a job ``worker_id`` still holds (and, if given, that is
    in one of ``statuses``); False if it does not, and nothing is written."""
    stmt = update(Job).where(Job.id == job_id, Job.worker_id == worker_id)
    if statuses is not None:
        stmt = stmt.where(Job.status.in_([s.value for s in statuses]))
    result = await session.execute(stmt.values(**values).execution_options(synchronize_session=False))
    return result.rowcount > 0


async def release_job(
    session: AsyncSession,
    job_id: str,
    worker_id: str,
    to: JobStatus,
    *,
    message: str,
    action: str,
    level: str = "info",
    values: dict[str, Any] | None = None,
) -> Job:
    """Move a job ``worker_id`` holds to ``to`` and drop its lease (Conflict
    if the worker no longer holds it or the status forbids the move). A
    worker re-queues only a job it is running: one the user paused stays
    paused (resuming it is the user's move)."""
    guard = [Job.worker_id == worker_id]
    if to is JobStatus.QUEUED:
        guard.append(Job.status == JobStatus.RUNNING.value)
    return await transition_job(
        session, job_id, to, message=message, action=action, level=level,
        values={**(values or {}), **RELEASED}, guard=guard,
    )


async def requeue_expired_jobs(session: AsyncSession, now: datetime, message: str) -> list[str]:
    """Re-queue running jobs whose lease expired before ``now`` (their worker died)."""
    expired = select(Job.id).where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
    requeued = []
    for job_id in (await session.scalars(expired)).all():
        try:
            await transition_job(
                session, job_id, JobStatus.QUEUED, message=message, action="re-queue", level="warn",
                values=dict(RELEASED), guard=[Job.lease_expires_at < now],
            )
            requeued.append(job_id)
        except (Conflict, NotFound):
            continue
    return requeued


async def read_job_any_org(session: AsyncSession, job_id: str) -> Job | None:
    return await _read_any_job(session, job_id, None, refresh=True)


async def add_checkpoint(session: AsyncSession, checkpoint: Checkpoint) -> None:
    session.add(checkpoint)
    await session.flush()


async def prune_checkpoints(session: AsyncSession, job_id: str, keep: int,
                            protect: Collection[str] = ()) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints, and but those named in
    ``protect``; returns their storage keys."""
    rows = [r for r in (
        await session.execute(
            select(Checkpoint.seq, Checkpoint.storage_key, Checkpoint.fine_tuned_model_checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.seq.desc())
            .offset(keep)
        )
    ).all() if r.fine_tuned_model_checkpoint not in protect]
    if rows:
        await session.execute(
            delete(Checkpoint).where(Checkpoint.seq.in_([r.seq for r in rows]))
        )
    return [r.storage_key for r in rows if r.storage_key]


async def read_checkpoint_model(db: Db, org_id: str, name: str) -> Row[Any] | None:
    """(storage_key, base model, job id) of the checkpoint model ``name`` of this organisation."""
    stmt = (
        select(Checkpoint.storage_key, func.coalesce(Job.base_model, Job.model).label("base_model"),
               Job.id.label("job_id"))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.org_id == org_id, Checkpoint.fine_tuned_model_checkpoint == name)
    )
    return (await db.execute(stmt)).first()
