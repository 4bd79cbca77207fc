"""A worker's hold on one running job: the lease has its home here.

A :class:`Lease` is created when a worker claims a job. Everything the
worker and its :class:`~openft.scheduler.progress.Recorder` write about the
job goes through it, and each write is fenced on the worker still holding
the job (``hold_job`` / ``release_job`` in ``store/queries/jobs.py``), so a
worker that lost its job (lease expired and re-queued elsewhere) can no
longer change it. ``OPENFT_LEASE_SECONDS`` is how long a hold lasts without
renewal; the worker renews it every ``OPENFT_HEARTBEAT_SECONDS``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from openft.domain import JobStatus
from openft.errors import Conflict, NotFound
from openft.store.db import Transaction
from openft.store.queries import jobs as job_queries


def utcnow() -> datetime:
    return datetime.now(UTC)


class Lease:
    def __init__(self, job_id: str, worker_id: str, seconds: float, transaction: Transaction):
        self.job_id = job_id
        self.worker_id = worker_id
        self.seconds = seconds
        self.transaction = transaction

    def expiry(self) -> datetime:
        """When a hold renewed now runs out."""
        return until(self.seconds)

    async def renew(self) -> bool:
        """Extend the hold; False if the worker no longer holds the job."""
        async with self.transaction() as session:
            return await self.write(session, statuses=None)

    async def write(
        self, session: AsyncSession, *, statuses: tuple[JobStatus, ...] | None = (JobStatus.RUNNING,),
        **values: Any,
    ) -> bool:
        """Write ``values`` (and renew) in the caller's transaction, if the job
        is still held and in ``statuses``; False, writing nothing, otherwise."""
        return await job_queries.hold_job(
            session, self.job_id, self.worker_id, statuses=statuses,
            lease_expires_at=self.expiry(), **values,
        )

    async def release(
        self, to: JobStatus, message: str, *, action: str, level: str = "info",
        values: dict[str, Any] | None = None,
    ) -> bool:
        """Move the job to ``to`` and give it up; False if it was no longer ours
        to move (cancelled meanwhile, or re-queued elsewhere)."""
        try:
            async with self.transaction() as session:
                await self.release_in(session, to, message, action=action, level=level, values=values)
        except (Conflict, NotFound):
            return False
        return True

    async def release_in(
        self, session: AsyncSession, to: JobStatus, message: str, *, action: str,
        level: str = "info", values: dict[str, Any] | None = None,
    ) -> None:
        """``release`` inside the caller's transaction; raises Conflict or
        NotFound (rolling back the caller's other writes) if it cannot."""
        await job_queries.release_job(
            session, self.job_id, self.worker_id, to, message=message, action=action,
            level=level, values=values,
        )


def until(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
