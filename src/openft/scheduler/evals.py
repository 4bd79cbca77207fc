"""Eval runs on a worker: claim, launch, record, recover.

The worker loop (``scheduler.worker``) calls :meth:`EvalRunner.tick` on
every pass. Eval runs have their own slots (``OPENFT_MAX_CONCURRENT_EVAL_RUNS``)
beside the training jobs' ones, so a big eval never takes a job's place, and
their processes run at the training processes' share of the host.

Each claimed run gets a process (``python -m openft.evals.run``, forked from
the training zygote where there is one) through the local executor; on a
Ray deployment the worker's own host runs it. The supervisor renews the
run's lease, writes each item the process reports (once: see
``store.queries.evals.record_item``), and ends the run:

* the process went through every item: ``completed``;
* it reported a failure, or the run's model is gone: ``failed`` with the error;
* it died without an outcome: back to ``queued`` (up to ``OPENFT_MAX_ATTEMPTS``
  runs), and the next attempt skips the items already recorded;
* the run was canceled (the API wrote ``canceled``): the heartbeat notices
  within ``OPENFT_HEARTBEAT_SECONDS`` and stops the process (SIGTERM: it
  cancels every generation in flight);
* the worker shuts down: the process is stopped and the run re-queued.

A worker that dies leaves its runs' leases to expire; any worker re-queues
them (:func:`~openft.store.queries.evals.requeue_expired_runs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from openft import domain
from openft.config import Settings
from openft.domain import EvalRunStatus
from openft.evals import tally
from openft.evals.config import EvalRunConfig, ModelWeights
from openft.graders import spec as grader_spec
from openft.graders.sandbox import SandboxLimits
from openft.scheduler.executors.local import LocalExecutor, LocalRun
from openft.scheduler.lease import until, utcnow
from openft.scheduler.worker import Unstartable
from openft.store.blobs import BlobStore
from openft.store.queries import evals as queries
from openft.store.queries import jobs as job_queries
from openft.store.tables import EvalOutputItem, EvalRun
from openft.training.records import EvalDoneRecord, EvalItemRecord, EventRecord, FailedRecord
from openft.weights import resolve_tuned

log = logging.getLogger(__name__)


class EvalRunner:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], blobs: BlobStore,
                 executor: LocalExecutor, worker_id: str, *, colocated: bool):
        self.settings, self.sessions, self.blobs, self.executor = settings, sessions, blobs, executor
        self.worker_id, self.colocated = worker_id, colocated
        self.running: dict[str, asyncio.Task[None]] = {}

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    async def tick(self) -> None:
        """Re-queue runs whose worker died; claim queued runs up to this worker's slots."""
        async with self.transaction() as session:
            _, failed = await queries.requeue_expired_runs(session, utcnow(), self.settings.max_attempts)
        for run_id in failed:
            await self._report_to_job(run_id)
        while len(self.running) < self.settings.max_concurrent_eval_runs:
            async with self.transaction() as session:
                run = await queries.claim_run(session, self.worker_id, until(self.settings.lease_seconds))
            if run is None:
                return
            task = asyncio.create_task(self.supervise(run), name=f"eval run {run.id}")
            self.running[run.id] = task
            task.add_done_callback(lambda _, run_id=run.id: self.running.pop(run_id, None))

    async def shutdown(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)

    # ------------------------------------------------------------ supervision
    async def supervise(self, run: EvalRun) -> None:
        process: LocalRun | None = None
        try:
            config = await self._config(run)
            process = await self.executor.launch(config, run.attempts)
            log.info("eval run %s: %s (attempt %d)", run.id, process.label, run.attempts)
            outcome: FailedRecord | EvalDoneRecord | None = None
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat, run.id, process)
                async for record in process.records():
                    if isinstance(record, EvalItemRecord):
                        await self._record(run, record)
                    elif isinstance(record, (FailedRecord, EvalDoneRecord)):
                        outcome = record
                    elif isinstance(record, EventRecord):
                        log.info("eval run %s: %s", run.id, record.message)
                code = await process.wait()
                group.cancel_scope.cancel()
            await self._finish(run, outcome, process.exit_reason(code))
        except asyncio.CancelledError:  # the worker is shutting down: give the run back
            if process is not None:
                await process.stop("cancel", self.settings.stop_grace_seconds)
            with anyio.CancelScope(shield=True):
                await self._release(run.id, EvalRunStatus.QUEUED)
            raise
        except Unstartable as exc:
            await self._release(run.id, EvalRunStatus.FAILED, {"code": exc.code, "message": str(exc)})
        except Exception as exc:
            log.exception("eval run %s: supervisor failed", run.id)
            if process is not None:
                await process.stop("cancel", self.settings.stop_grace_seconds)
            await self._release(run.id, EvalRunStatus.FAILED, {"code": "internal_error", "message": str(exc)})

    async def _record(self, run: EvalRun, record: EvalItemRecord) -> None:
        row = EvalOutputItem(
            id=domain.new_id("eval_output_item"), run_id=run.id, eval_id=run.eval_id,
            datasource_item_id=record.index, status=record.status, datasource_item=record.item, results=record.results,
            sample=record.sample, created_at=datetime.now(UTC))

        def counts(current: EvalRun) -> dict[str, Any]:
            before = {"result_counts": current.result_counts,
                      "per_testing_criteria_results": current.per_testing_criteria_results,
                      "per_model_usage": current.per_model_usage}
            return {**tally.add(before, record.status, record.results, record.usage),
                    "updated_at": datetime.now(UTC), "lease_expires_at": until(self.settings.lease_seconds)}

        async with self.transaction() as session:
            await queries.record_item(session, run.id, self.worker_id, row, counts)

    async def _heartbeat(self, run_id: str, process: LocalRun) -> None:
        """Keep the lease; stop the process when the run was canceled (or taken from us)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            async with self.transaction() as session:
                held = await queries.hold_run(session, run_id, self.worker_id,
                                              lease_expires_at=until(self.settings.lease_seconds))
            if not held:
                await process.stop("cancel", self.settings.stop_grace_seconds)
                return

    async def _finish(self, run: EvalRun, outcome: FailedRecord | EvalDoneRecord | None, exit_reason: str) -> None:
        if isinstance(outcome, EvalDoneRecord):
            await self._release(run.id, EvalRunStatus.COMPLETED)
        elif isinstance(outcome, FailedRecord):
            await self._release(run.id, EvalRunStatus.FAILED, {"code": outcome.code, "message": outcome.message})
        elif run.attempts < self.settings.max_attempts:
            log.warning("eval run %s: its process ended without an outcome (%s); re-queued", run.id, exit_reason)
            await self._release(run.id, EvalRunStatus.QUEUED)
        else:
            await self._release(run.id, EvalRunStatus.FAILED, {
                "code": "internal_error",
                "message": f"The eval run's process ended without an outcome ({exit_reason}) "
                           f"{run.attempts} times."})

    async def _report_to_job(self, run_id: str) -> None:
        """A checkpoint's eval run ended: its pass rate joins the job's metrics
        (a ``metrics`` event at the checkpoint's step, charted with the loss)."""
        async with self.transaction() as session:
            run = await queries.read_run_any_org(session, run_id)
            if run is None or run.fine_tuning_job_id is None:
                return
            job_id, step = run.fine_tuning_job_id, int(run.checkpoint_step or 0)
            if not EvalRunStatus(run.status).is_terminal or await job_queries.read_job(session, run.org_id,
                                                                                       job_id) is None:
                return  # a run that goes on; the link is the server's own, never another organisation's job
            counts = run.result_counts
            rate = tally.pass_rate(counts)
            if run.status == EvalRunStatus.COMPLETED.value and rate is not None:
                await job_queries.add_event(
                    session, job_id, f"Eval pass rate of the checkpoint at step {step}: {rate:.2f} "
                    f"({counts['passed']}/{counts['total']} items)", type="metrics",
                    data={"step": step, "eval_pass_rate": rate, "eval_run_id": run.id})
            else:
                why = (run.error or {}).get("message", run.status)
                await job_queries.add_event(session, job_id, f"The eval of the checkpoint at step {step} did not "
                                            f"complete: {why}", level="warn", data={"eval_run_id": run.id})

    async def _release(self, run_id: str, to: EvalRunStatus, error: dict[str, str] | None = None) -> None:
        """End the run (or give it back to the queue); a job's run reports its end to the job."""
        async with self.transaction() as session:
            released = await queries.release_run(session, run_id, self.worker_id, to, error)
        if released and to.is_terminal:
            await self._report_to_job(run_id)

    # ------------------------------------------------------------------ config
    async def _config(self, run: EvalRun) -> EvalRunConfig:
        """What the run's process needs: its model's and judges' weights, the
        eval's criteria, the items recorded already."""
        async with self.sessions() as session:
            evaluation = await queries.read_eval(session, run.org_id, run.eval_id)
            if evaluation is None:
                raise Unstartable("The eval of this run was deleted.", code="eval_not_found")
            weights = await self._weights(session, run.org_id, run.model) if run.model else None
            judges = {}
            for criterion in evaluation.testing_criteria:
                for _, model in grader_spec.judge_models(criterion):
                    judges[model] = await self._weights(session, run.org_id, model)
            done = await queries.done_item_ids(session, run.id)
        threads, nice = self.settings.training_share(self.colocated)
        return EvalRunConfig(
            run_id=run.id, eval_id=run.eval_id, storage_url=self.settings.resolved_storage_url,
            storage_options=self.settings.storage_options, models_dir=str(self.settings.models_dir),
            items_key=run.items_key, criteria=evaluation.testing_criteria, done=done, model=run.model,
            weights=weights, sampling=dict(run.data_source.get("sampling_params") or {}), judges=judges,
            grader_limits={"python": SandboxLimits.from_settings(self.settings).to_dict(),
                           "embedding_model": str(self.settings.grader_embedding_model or "") or None},
            device=self.settings.device, threads=threads, nice=nice, max_batch=self.settings.serving_max_batch,
            memory_budget_bytes=self.settings.serving_memory_mb * 2**20,
            generation_timeout_seconds=self.settings.generation_timeout_seconds,
        )

    async def _weights(self, session: AsyncSession, org_id: str, model: str) -> ModelWeights:
        found = await resolve_tuned(session, org_id, model, self.settings)
        if found is None:
            raise Unstartable(f"The model {model} is no longer available.", code="model_not_found")
        return ModelWeights(base=found[0], adapter_key=found[1])
