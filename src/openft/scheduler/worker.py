"""The worker loop: claim, run, supervise, record, recover.

One :class:`Worker` per process (inside ``openft serve`` unless
``OPENFT_WORKER=false``, or alone as ``openft worker``). Every
``OPENFT_POLL_SECONDS`` it re-queues jobs whose lease expired (their worker
died) and claims queued jobs up to ``OPENFT_MAX_CONCURRENT_JOBS``; inside
``openft serve`` the API also wakes it the moment it queues a job. A claim is
the conditional status update ``queued -> running`` (with ``SKIP LOCKED`` on
PostgreSQL), so two workers never run one job.

The executor is ``local`` (a subprocess per job) or ``ray`` (Ray work on a
cluster, ``executors/ray.py``); a Ray worker claims only jobs the cluster has
room for now and leaves the others queued, with an event saying why, until
``OPENFT_RAY_PLACEMENT_TIMEOUT_SECONDS`` fails them.

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
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from openft.config import Settings
from openft.domain import JobStatus, fine_tuned_name
from openft.errors import Conflict, NotFound
from openft.integrations.sink import IntegrationSink
from openft.scheduler import progress
from openft.scheduler.executors.local import LocalExecutor, LocalRun
from openft.scheduler.lease import Lease, until, utcnow
from openft.store.blobs import BlobStore
from openft.store.queries import files as file_queries
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as model_queries
from openft.store.queries import orgs as org_queries
from openft.store.tables import Job
from openft.training.config import RunConfig
from openft.weights import resolve_base, resolve_tuned

if TYPE_CHECKING:
    from openft.scheduler.executors.ray import RayExecutor, RayRun

log = logging.getLogger(__name__)


def make_executor(settings: Settings) -> LocalExecutor | RayExecutor:
    """The executor ``OPENFT_EXECUTOR`` names; Ray connects here (RayUnavailable if it cannot)."""
    if settings.executor == "ray":
        from openft.scheduler.executors.ray import RayExecutor

        executor = RayExecutor(settings)
        executor.connect()
        return executor
    return LocalExecutor(settings.home / "runs", warm=settings.warm_start)


class Unstartable(Exception):
    """A job that cannot start (what it needs is gone): it fails with this error."""

    def __init__(self, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        executor: LocalExecutor | RayExecutor | None = None,
        *,
        colocated: bool = False,
    ):
        """``colocated``: the worker shares its host with the API (``openft serve``),
        so training leaves the API room by default (``Settings.training_share``)."""
        self.settings = settings
        self.sessions = sessions
        self.blobs = blobs
        self.executor = executor or make_executor(settings)
        self.colocated = colocated
        self.id = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self.waiting_since: dict[str, float] = {}
        """Queued jobs this worker cannot place yet (Ray), and since when."""
        self.closing: set[asyncio.Task[None]] = set()
        """Integration loggers finishing their runs after their job's process ended."""
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        from openft.scheduler.evals import EvalRunner

        local = self.executor if isinstance(self.executor, LocalExecutor) else LocalExecutor(
            settings.home / "runs", warm=False)
        self.evals = EvalRunner(settings, sessions, blobs, local, self.id, colocated=colocated)
        """Eval runs, in their own slots beside the jobs' (``scheduler/evals.py``)."""

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        log.info("worker %s started (max %d concurrent jobs)", self.id, self.settings.max_concurrent_jobs)
        if isinstance(self.executor, LocalExecutor):
            await self.executor.start()
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
                    await self.evals.tick()
                except Exception:
                    log.exception("worker loop error (retrying)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.settings.poll_seconds)
                self._wakeup.clear()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    def wake(self) -> None:
        """Look for queued jobs now, not at the next poll (the co-located API
        calls this when it queues one)."""
        self._wakeup.set()

    async def _shutdown(self) -> None:
        """Graceful stop: running jobs save their state and go back to the queue, as do eval runs."""
        await self.evals.shutdown()
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        if self.closing:
            await asyncio.wait(self.closing, timeout=10)
        if isinstance(self.executor, LocalExecutor):
            await self.executor.close()

    # ---------------------------------------------------------------- claims
    async def claim(self) -> Job | None:
        admission = await self.executor.admission()
        async with self.transaction() as session:
            job = await job_queries.claim_job(session, self.id, until(self.settings.lease_seconds), admission)
        if job is not None:
            self.waiting_since.pop(job.id, None)
        await self._explain_waiting(getattr(admission, "waiting", {}))
        return job

    async def _explain_waiting(self, waiting: dict[str, str]) -> None:
        """Jobs the cluster has no room for: one event when they start waiting,
        failure once they have waited ``OPENFT_RAY_PLACEMENT_TIMEOUT_SECONDS``."""
        timeout = self.settings.ray_placement_timeout_seconds
        for job_id, why in waiting.items():
            first = job_id not in self.waiting_since
            since = self.waiting_since.setdefault(job_id, time.monotonic())
            async with self.transaction() as session:
                if first:
                    await job_queries.add_event(
                        session, job_id, f"Waiting for resources: {why}. The job stays queued and "
                        f"fails if it cannot start within {timeout:g} s.", level="warn",
                        data={"reason": why},
                    )
                elif time.monotonic() - since >= timeout:
                    self.waiting_since.pop(job_id, None)
                    message = f"No room on the Ray cluster within {timeout:g} s: {why}."
                    with contextlib.suppress(Conflict, NotFound):  # cancelled meanwhile
                        await job_queries.transition_job(
                            session, job_id, JobStatus.FAILED, message=f"Fine-tuning job failed: {message}",
                            action="fail", level="error", guard=[Job.status == JobStatus.QUEUED.value],
                            values={"error": {"code": "resources_unavailable", "message": message,
                                              "param": "resources"}},
                        )

    async def reap_expired(self) -> None:
        async with self.transaction() as session:
            await job_queries.requeue_expired_jobs(
                session, utcnow(),
                "The worker running this job stopped responding (its lease expired); the job "
                "was re-queued and will resume from its last checkpoint.",
            )

    # ------------------------------------------------------------ supervision
    async def supervise(self, job: Job) -> None:
        lease = Lease(job.id, self.id, self.settings.lease_seconds, self.transaction)
        run: LocalRun | RayRun | None = None
        sink: IntegrationSink | None = None
        try:
            config, org_name = await self._run_config(job)
            run = await self.executor.launch(config, job.attempts, job.resources)
            log.info("job %s: %s (attempt %d)", job.id, run.label, job.attempts)
            recorder = progress.Recorder(
                lease, self.blobs, job, fine_tuned_name(job.base_model or job.model, org_name, job.suffix, job.id),
                self.settings.max_attempts,
            )
            sink = await self._integrations(job)
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat, lease, run)
                async for record in run.records():
                    await recorder.apply(record)
                    if sink is not None:
                        sink.send(record, fine_tuned_model=recorder.model_name)
                exit_code = await run.wait()
                group.cancel_scope.cancel()
            await recorder.finish(exit_code, run.exit_reason(exit_code))
            if sink is not None:
                self._close_later(sink, {"done": "succeeded", "failed": "failed", "paused": "paused"}.get(
                    recorder.outcome or "", "stopped"))
        except asyncio.CancelledError:
            if sink is not None:
                self._close_later(sink, "paused")
            if run is not None:  # worker shutting down: save state, give the job back
                await run.stop("pause", self.settings.stop_grace_seconds)
                await lease.release(JobStatus.QUEUED, "The worker shut down; the job was re-queued.",
                                    action="re-queue", level="warn")
            raise
        except Unstartable as exc:
            await progress.fail(lease, exc.code, str(exc), exc.param)
        except Exception as exc:
            log.exception("job %s: supervisor failed", job.id)
            if run is not None:
                await run.stop("cancel", self.settings.stop_grace_seconds)
            await progress.fail(lease, "internal_error", f"Worker error: {exc}", None)

    async def _integrations(self, job: Job) -> IntegrationSink | None:
        """The job's experiment trackers (W&B, MLflow), fed from this worker; None if it has none."""
        from openft.integrations import PACKAGES

        trackers = [i for i in job.integrations or [] if i["type"] in PACKAGES]  # not "eval": scheduler/evals.py
        if not trackers:
            return None

        async def add_event(message: str, level: str, data: dict[str, object]) -> None:
            async with self.transaction() as session:
                await job_queries.add_event(session, job.id, message, level=level, data=data or None)

        sink = IntegrationSink({
            "job": {"job_id": job.id, "model": job.model, "training_file": job.training_file,
                    "validation_file": job.validation_file, "seed": job.seed, "suffix": job.suffix,
                    "method_type": job.method.type.value},
            "integrations": trackers,
            "settings": {"wandb_dir": str(self.settings.home / "wandb"),
                         "mlflow_tracking_uri": self.settings.resolved_mlflow_tracking_uri},
        }, add_event)
        await sink.start()
        return sink

    def _close_later(self, sink: IntegrationSink, outcome: str) -> None:
        """Let the trackers finish their runs without holding the job's slot."""
        task = asyncio.create_task(sink.close(outcome), name="integrations close")
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def _heartbeat(self, lease: Lease, run: LocalRun | RayRun) -> None:
        """Keep the lease; pass cancel/pause from the database on to the process."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            held = await lease.renew()
            async with self.transaction() as session:
                job = await job_queries.read_job_any_org(session, lease.job_id)
            status = job.status if job is not None else None
            if not held or status == JobStatus.CANCELLED.value:
                await run.stop("cancel", self.settings.stop_grace_seconds)
                return
            if status == JobStatus.PAUSED.value:
                await run.stop("pause", self.settings.stop_grace_seconds)
                return

    async def _run_config(self, job: Job) -> tuple[RunConfig, str]:
        """What the training process needs, and the organisation's name."""
        async with self.sessions() as session:
            org = await org_queries.read_org(session, job.org_id)
            training = await file_queries.read_file(session, job.org_id, job.training_file)
            validation = (
                await file_queries.read_file(session, job.org_id, job.validation_file)
                if job.validation_file
                else None
            )
            base = await resolve_base(session, job.base_model or job.model, self.settings, known_base=True)
            start = (
                await model_queries.read_tuned_weights(session, job.org_id, job.model)
                if job.base_model else None
            )
            judges = await self._judges(session, job)
        if job.base_model and start is None:
            raise Unstartable(
                f"The model this job continues from, {job.model}, no longer exists (it was deleted, "
                "or it was a checkpoint that a newer checkpoint replaced).",
                code="model_not_found", param="model",
            )
        if training is None:
            raise FileNotFoundError(f"training file {job.training_file} is gone")
        if base is None:
            raise FileNotFoundError(f"base model {job.model} is no longer available")
        config = RunConfig.create(
            self.settings, job_id=job.id, base=base, training_file_key=training.storage_key,
            validation_file_key=validation.storage_key if validation else None, method=job.method,
            seed=job.seed, start_key=start.storage_key if start else None, colocated=self.colocated,
            resume_state_key=job.resume_state_key, judges=judges,
        )
        return config, org.name if org else job.org_id

    async def _judges(self, session: AsyncSession, job: Job) -> dict[str, dict[str, object]]:
        """Where the judge models of a reinforcement job's grader are, for its organisation."""
        if job.method.grader is None:
            return {}
        from openft.graders import spec as grader_spec

        judges: dict[str, dict[str, object]] = {}
        for _, model in grader_spec.judge_models(job.method.grader):
            found = await resolve_tuned(session, job.org_id, model, self.settings)
            if found is None:
                raise FileNotFoundError(f"judge model {model} is no longer available")
            judges[model] = {"base": found[0].to_dict(), "adapter_key": found[1]}
        return judges

    def __repr__(self) -> str:  # pragma: no cover
        return f"Worker({self.id})"
