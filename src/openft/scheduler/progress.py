"""Turning a training process's progress records into store writes.

Record types: ``openft.training.records`` (the training side sends the same
types). Every write is
fenced on the worker still owning the job, and the final status goes through
``transition_job``, so a late ``done`` cannot overwrite a cancelled job.
Checkpoints beyond the newest ``KEEP_CHECKPOINTS`` are deleted with their
weights and training state. The recorder knows the job only through its
:class:`~openft.scheduler.lease.Lease`.

A job with an ``eval`` integration (an openft extension) gets an eval run
queued for each checkpoint it records (run by a worker's eval slots,
``scheduler/evals.py``, which adds the pass rate to the job's metrics); with
``fine_tuned_model_from: best_eval_pass_rate`` the recorder waits, when
training is done, for those runs to end and makes the kept checkpoint with
the best pass rate (the latest of equals) the fine-tuned model.

A paused job's process finishes the step it is in before it saves its
state: the events, metrics and checkpoint of that step are still recorded
(``STILL_REPORTING``), so the job's history has every step its saved state
has. A cancelled job records nothing more.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from openft.domain import EvalRunStatus, JobStatus, new_id
from openft.errors import Conflict, NotFound
from openft.evals import tally
from openft.evals.config import JobEval
from openft.scheduler.lease import Lease
from openft.store.blobs import BlobStore
from openft.store.queries import evals as eval_queries
from openft.store.queries import files as file_queries
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as model_queries
from openft.store.tables import Checkpoint, EvalRun, File, FineTunedModel, Job
from openft.training.records import (
    CheckpointRecord,
    DoneRecord,
    EventRecord,
    FailedRecord,
    HyperparametersRecord,
    MetricsRecord,
    PausedRecord,
    Record,
)

log = logging.getLogger(__name__)
STILL_REPORTING = (JobStatus.RUNNING, JobStatus.PAUSED)
"""Statuses in which a process's step records are written (see the module docstring)."""

KEEP_CHECKPOINTS = 3
RESULTS_FILENAME = "step_metrics.csv"


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


EVAL_WAIT_SECONDS = 1800.0
"""Longest a best_eval_pass_rate job waits, after training, for its checkpoints' eval runs."""
EVAL_POLL_SECONDS = 0.5


class Recorder:
    def __init__(self, lease: Lease, blobs: BlobStore, job: Job, model_name: str, max_attempts: int):
        self.lease = lease
        self.blobs = blobs
        self.job_id = job.id
        self.org_id = job.org_id
        self.base_model = job.base_model or job.model
        self.model_name = model_name
        self.max_attempts = max_attempts
        self.outcome: str | None = None
        self.eval = JobEval.of(job.integrations)
        """The job's eval integration, as stored (``services.evals.check_job_eval``)."""
        self.pick_by_eval = job.method.hyperparameters.get("fine_tuned_model_from") == "best_eval_pass_rate"

    async def apply(self, record: Record) -> None:
        match record:
            case EventRecord():
                await self._on_event(record)
            case HyperparametersRecord():
                async with self.lease.transaction() as session:
                    await self.lease.write(session, resolved_hyperparameters=record.resolved)
            case MetricsRecord():
                await self._on_metrics(record)
            case CheckpointRecord():
                await self._on_checkpoint(record)
            case PausedRecord():
                await self._on_paused(record)
            case DoneRecord():
                await self._on_done(record)
            case FailedRecord():
                self.outcome = "failed"
                await fail(self.lease, record.code, record.message, record.param)

    async def _on_event(self, record: EventRecord) -> None:
        async with self.lease.transaction() as session:
            if not await self.lease.write(session, statuses=STILL_REPORTING):
                return
            await job_queries.add_event(session, self.job_id, record.message, level=record.level, data=record.data)

    async def _on_metrics(self, record: MetricsRecord) -> None:
        async with self.lease.transaction() as session:
            if await self.lease.write(session, statuses=STILL_REPORTING,
                                      estimated_finish=_utc(record.estimated_finish)):
                await job_queries.add_event(session, self.job_id, record.message, type="metrics", data=record.data)

    async def _on_checkpoint(self, record: CheckpointRecord) -> None:
        step = int(record.step)
        async with self.lease.transaction() as session:
            if not await self.lease.write(session, statuses=STILL_REPORTING,
                                          resume_state_key=record.state_key, resume_step=step):
                return
            await job_queries.add_checkpoint(session, Checkpoint(
                id=new_id("checkpoint"),
                job_id=self.job_id,
                created_at=datetime.now(UTC),
                step_number=step,
                fine_tuned_model_checkpoint=f"{self.model_name}:ckpt-step-{step}",
                metrics={k: float(v) for k, v in record.metrics.items()},
                storage_key=record.model_key,
            ))
            await job_queries.add_event(session, self.job_id, f"Checkpoint created at step {step}")
            protect: set[str] = set()
            if self.eval is not None:
                await self._queue_eval(session, step)
                protect = await self._evaluated(session)
            pruned = await job_queries.prune_checkpoints(session, self.job_id, KEEP_CHECKPOINTS, protect)
        for model_key in pruned:
            state = model_key.replace("/checkpoints/", "/state/")
            await anyio.to_thread.run_sync(self.blobs.delete_tree, model_key)
            await anyio.to_thread.run_sync(self.blobs.delete_tree, state)

    async def _queue_eval(self, session: AsyncSession, step: int) -> None:
        """An eval run of the checkpoint at ``step``, queued with it."""
        assert self.eval is not None
        evaluation = await eval_queries.read_eval(session, self.org_id, self.eval.eval_id)
        if evaluation is None:
            await job_queries.add_event(session, self.job_id, f"The eval {self.eval.eval_id} was deleted; the "
                                        f"checkpoint at step {step} is not evaluated.", level="warn")
            return
        now, checkpoint = datetime.now(UTC), f"{self.model_name}:ckpt-step-{step}"
        await eval_queries.add(session, EvalRun(
            id=new_id("eval_run"), eval_id=evaluation.id, org_id=self.org_id, name=f"step {step} of {self.job_id}",
            model=checkpoint, status=EvalRunStatus.QUEUED.value,
            data_source={**self.eval.data_source, "model": checkpoint},
            metadata_={"fine_tuning_job": self.job_id, "step": str(step)}, items_key=self.eval.items_key,
            fine_tuning_job_id=self.job_id, checkpoint_step=step,
            total_items=self.eval.n_items, error=None, created_at=now, updated_at=now, attempts=0,
            **tally.empty(evaluation.testing_criteria)))
        await job_queries.add_event(session, self.job_id, f"Eval {evaluation.name} queued for the checkpoint at "
                                    f"step {step}", data={"eval_id": evaluation.id})

    async def _eval_runs(self, session: AsyncSession) -> tuple[dict[str, Any], list[Any]]:
        """The job's checkpoints by name, and the eval runs of them."""
        kept = await job_queries.list_checkpoints(session, self.job_id, after=None, limit=1000)
        by_name = {c.fine_tuned_model_checkpoint: c for c in kept.items}
        runs = await eval_queries.runs_of_job(session, self.org_id, self.job_id)
        return by_name, runs

    async def _evaluated(self, session: AsyncSession) -> set[str]:
        """Checkpoints that pruning keeps beyond the newest: those whose eval
        has not run yet, and (best_eval_pass_rate) the best so far."""
        by_name, runs = await self._eval_runs(session)
        pending = {r.model for r in runs if r.status in (EvalRunStatus.QUEUED.value, EvalRunStatus.IN_PROGRESS.value)}
        best = self._best(by_name, runs)
        return pending | ({best[0]} if best and self.pick_by_eval else set())

    @staticmethod
    def _best(by_name: dict[str, Any], runs: list[Any]) -> tuple[str, int, float] | None:
        """(checkpoint, step, pass rate) of the completed eval that passed most (the latest of equals)."""
        scored = [(rate, by_name[r.model].step_number, r.model) for r in runs
                  if r.status == EvalRunStatus.COMPLETED.value and r.model in by_name
                  and (rate := tally.pass_rate(r.result_counts)) is not None]
        if not scored:
            return None
        rate, step, name = max(scored)
        return name, step, rate

    async def _best_by_eval(self) -> tuple[str, int, float] | None:
        """(storage key, step, pass rate) of the checkpoint whose eval passed
        most, once no eval run of the job is pending; None without one."""
        deadline = time.monotonic() + EVAL_WAIT_SECONDS
        while True:
            async with self.lease.transaction() as session:
                by_name, runs = await self._eval_runs(session)
            if not any(r.status in (EvalRunStatus.QUEUED.value, EvalRunStatus.IN_PROGRESS.value) for r in runs) \
                    or time.monotonic() > deadline:
                break
            await self.lease.renew()
            await anyio.sleep(EVAL_POLL_SECONDS)
        best = self._best(by_name, runs)
        if best is None or not by_name[best[0]].storage_key:
            return None
        name, step, rate = best
        return by_name[name].storage_key, step, rate

    async def _on_paused(self, record: PausedRecord) -> None:
        self.outcome = "paused"
        async with self.lease.transaction() as session:
            if await self.lease.write(
                session, statuses=(JobStatus.PAUSED,), resume_state_key=record.state_key, resume_step=int(record.step),
            ):
                await job_queries.add_event(
                    session, self.job_id, f"Training state saved at step {record.step}; resume the job to continue.",
                )

    async def _on_done(self, record: DoneRecord) -> None:
        self.outcome = "done"
        size = await anyio.to_thread.run_sync(self.blobs.size, record.results_key)
        chosen = None
        if self.pick_by_eval and (best := await self._best_by_eval()) is not None:
            key, step, rate = best
            await anyio.to_thread.run_sync(self._copy_tree, key, record.model_key)
            chosen = f"the checkpoint at step {step}, whose eval pass rate {rate:.2f} was the best"
        elif self.pick_by_eval:
            async with self.lease.transaction() as session:
                await job_queries.add_event(session, self.job_id, "No eval run of the job's checkpoints completed; "
                                            "the fine-tuned model is the weights after the last step.", level="warn")
        now = datetime.now(UTC)
        try:
            async with self.lease.transaction() as session:
                results = File(
                    id=new_id("file"), org_id=self.org_id, filename=RESULTS_FILENAME,
                    purpose="fine-tune-results", bytes=size, storage_key=record.results_key,
                    created_at=now,
                )
                await file_queries.create_file(session, results)
                await model_queries.create_fine_tuned_model(session, FineTunedModel(
                    id=self.model_name, org_id=self.org_id, job_id=self.job_id,
                    base_model=self.base_model, storage_key=record.model_key,
                    created_at=now,
                ))
                await job_queries.add_event(
                    session, self.job_id, f"New fine-tuned model created: {self.model_name}"
                    + (f" (from {chosen})" if chosen else "")
                )
                await self.lease.release_in(
                    session, JobStatus.SUCCEEDED, "The job has successfully completed",
                    action="complete",
                    values={
                        "fine_tuned_model": self.model_name,
                        "trained_tokens": int(record.trained_tokens),
                        "result_files": [results.id],
                    },
                )
        except (Conflict, NotFound):
            log.info("job %s finished training but is no longer running; result dropped", self.job_id)
            return
        await anyio.to_thread.run_sync(self.blobs.delete_tree, f"jobs/{self.job_id}/state")

    def _copy_tree(self, source: str, target: str) -> None:
        """The folder at blob ``source`` becomes the one at ``target`` (blocking)."""
        with tempfile.TemporaryDirectory() as local:
            self.blobs.get_dir(source, local)
            self.blobs.put_dir(local, target)

    async def finish(self, exit_code: int, how: str | None = None) -> None:
        """The process ended: if it left no outcome, it crashed (``how``: in what way)."""
        if self.outcome is not None:
            return
        async with self.lease.transaction() as session:
            job = await job_queries.read_job_any_org(session, self.job_id)
        if job is None or job.status != JobStatus.RUNNING.value or job.worker_id != self.lease.worker_id:
            return  # cancelled or paused: the exit was asked for
        how = how or (f"signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}")
        if job.attempts >= self.max_attempts:
            await fail(self.lease, "internal_error", f"The training process exited unexpectedly "
                       f"({how}) on each of {job.attempts} attempts.", None)
            return
        await self.lease.release(
            JobStatus.QUEUED,
            f"The training process exited unexpectedly ({how}); the job was re-queued and will "
            f"resume from step {job.resume_step or 0}.",
            action="re-queue", level="warn",
        )


async def fail(lease: Lease, code: str, message: str, param: str | None) -> None:
    await lease.release(
        JobStatus.FAILED, f"Fine-tuning job failed: {message}", action="fail", level="error",
        values={"error": {"code": code, "message": message, "param": param}},
    )
