"""The worker loop: claim, run, supervise, record, recover.

One :class:`Worker` per process (inside ``openft serve`` unless
``OPENFT_WORKER=false``, or alone as ``openft worker``). Every
``OPENFT_POLL_SECONDS`` it re-queues jobs whose lease expired (their worker
died) and claims queued jobs up to ``OPENFT_MAX_CONCURRENT_JOBS``. A claim is
the conditional status update ``queued -> running`` (with ``SKIP LOCKED`` on
PostgreSQL), so two workers never run one job.

For each running job a supervisor task launches the training process through
the executor, heartbeats the lease, notices cancel/pause written by the API
and passes them on as signals, and writes the process's progress records to
the store. Every write is fenced on ``worker_id``: a worker that lost its
job (lease expired, job re-queued) can no longer change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from datetime import datetime, timedelta, timezone


import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from openft.config import Settings
from openft.domain import JobStatus
from openft.errors import Conflict, NotFound
from openft.scheduler import progress
from openft.scheduler.executors.local import LocalExecutor, LocalRun
from openft.store.blobs import BlobStore
from openft.store.queries import files as file_queries
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as model_queries
from openft.store.queries import orgs as org_queries
from openft.store.tables import Job
from openft.training.config import RunConfig
from openft.weights import read_models_file

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        executor: LocalExecutor | None = None,
    ):
        self.settings = settings
        self.sessions = sessions
        self.blobs = blobs
        self.executor = executor or LocalExecutor(settings.home / "runs")
        self.id = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()

    @contextlib.asynccontextmanager
    async def transaction(self):  # type: ignore[no-untyped-def]
        async with self.sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        log.info("worker %s started (max %d concurrent jobs)", self.id, self.settings.max_concurrent_jobs)
        try:
            while not self._stopping.is_set():
                try:
                    await self.reap_expired()
                    while len(self.running) < self.settings.max_concurrent_jobs:
                        job = await self.claim()
                        if job is None:
                            break
                        task = asyncio.create_task(self.supervise(job), name=f"job {job.id}")
                        self.running[job.id] = task
                        task.add_done_callback(lambda _, job_id=job.id: self.running.pop(job_id, None))
                except Exception:
                    log.exception("worker loop error (retrying)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.poll_seconds)
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        """Graceful stop: running jobs save their state and go back to the queue."""
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)

    # ---------------------------------------------------------------- claims
    async def claim(self) -> Job | None:
        async with self.transaction() as session:
            for job_id in await job_queries.claimable_job_ids(session, limit=5):
                try:
                    return await job_queries.transition_job(
                        session,
                        job_id,
                        JobStatus.RUNNING,
                        message="Fine-tuning job started",
                        action="start",
                        values={
                            "worker_id": self.id,
                            "lease_expires_at": self._lease(),
                            "attempts": Job.attempts + 1,
                        },
                    )
                except Conflict:
                    continue
        return None

    def _lease(self) -> datetime:
        return _now() + timedelta(seconds=self.settings.lease_seconds)

    async def reap_expired(self) -> None:
        async with self.transaction() as session:
            for job_id in await job_queries.expired_job_ids(session, _now()):
                with contextlib.suppress(Conflict, NotFound):
                    await job_queries.transition_job(
                        session,
                        job_id,
                        JobStatus.QUEUED,
                        message="The worker running this job stopped responding (its lease "
                        "expired); the job was re-queued and will resume from its last checkpoint.",
                        action="re-queue",
                        level="warn",
                        values={"worker_id": None, "lease_expires_at": None},
                        guard=[Job.lease_expires_at < _now()],
                    )

    # ------------------------------------------------------------ supervision
    async def supervise(self, job: Job) -> None:
        run: LocalRun | None = None
        try:
            config = await self._run_config(job)
            run = await self.executor.launch(config, job.attempts)
            log.info("job %s: training process %s (attempt %d)", job.id, run.pid, job.attempts)
            recorder = progress.Recorder(self, job, config)
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat, job.id, run)
                async for record in run.records():
                    await recorder.apply(record)
                exit_code = await run.wait()
                group.cancel_scope.cancel()
            await recorder.finish(exit_code)
        except asyncio.CancelledError:
            if run is not None:  # worker shutting down: save state, give the job back
                await run.stop("pause", self.settings.stop_grace_seconds)
                await self._requeue(job.id, "The worker shut down; the job was re-queued.")
            raise
        except Exception as exc:
            log.exception("job %s: supervisor failed", job.id)
            if run is not None:
                await run.stop("cancel", self.settings.stop_grace_seconds)
            await progress.fail(self, job.id, "internal_error", f"Worker error: {exc}", None)

    async def _heartbeat(self, job_id: str, run: LocalRun) -> None:
        """Keep the lease; pass cancel/pause from the database on to the process."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            async with self.transaction() as session:
                owned = await job_queries.update_owned_job(
                    session, job_id, self.id, lease_expires_at=self._lease()
                )
                job = await job_queries.read_job_any_org(session, job_id)
            status = job.status if job is not None else None
            if not owned or status == JobStatus.CANCELLED.value:
                await run.stop("cancel", self.settings.stop_grace_seconds)
                return
            if status == JobStatus.PAUSED.value:
                await run.stop("pause", self.settings.stop_grace_seconds)
                return

    async def _requeue(self, job_id: str, message: str) -> None:
        async with self.transaction() as session:
            with contextlib.suppress(Conflict, NotFound):
                await job_queries.transition_job(
                    session, job_id, JobStatus.QUEUED, message=message, action="re-queue",
                    level="warn", values={"worker_id": None, "lease_expires_at": None},
                    guard=[Job.worker_id == self.id],
                )

    async def _run_config(self, job: Job) -> RunConfig:
        async with self.sessions() as session:
            org = await org_queries.read_org(session, job.org_id)
            training = await file_queries.read_file(session, job.org_id, job.training_file)
            validation = (
                await file_queries.read_file(session, job.org_id, job.validation_file)
                if job.validation_file
                else None
            )
            registered = await model_queries.read_base_model(session, job.model)
        if training is None:
            raise FileNotFoundError(f"training file {job.training_file} is gone")
        return RunConfig(
            job_id=job.id,
            org_name=org.name if org else job.org_id,
            model=job.model,
            model_path=(
                registered.path if registered else read_models_file(self.settings.models_file).get(job.model)
            ),
            models_dir=str(self.settings.models_dir),
            storage_url=self.settings.resolved_storage_url,
            training_file_key=training.storage_key,
            validation_file_key=validation.storage_key if validation else None,
            method=job.method,
            seed=job.seed,
            suffix=job.suffix,
            n_training_examples=training.n_examples or 0,
            resume_state_key=job.resume_state_key,
            device=self.settings.device,
        )

    def fine_tuned_name(self, job: Job, org_name: str) -> str:
        return f"ft:{job.model}:{org_name}:{job.suffix or ''}:{job.id[-8:]}"

    def __repr__(self) -> str:  # pragma: no cover
        return f"Worker({self.id})"



