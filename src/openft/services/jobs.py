"""Fine-tuning jobs: creation (the checks that need the database), the
user's state changes (cancel, pause, resume), listings, and the conversion
of rows to the wire objects. Status itself is written only through
``store.queries.jobs.transition_job``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from openft import domain, families
from openft.domain import FileFormat, JobSpec, JobStatus, MethodType
from openft.errors import InvalidRequest, NotFound
from openft.integrations import missing_package
from openft.schemas.jobs import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobError,
    JobHyperparameters,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListFineTuningJobsResponse,
)
from openft.services.models import ModelRegistry
from openft.store.queries import files as file_queries
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as model_queries
from openft.store.queries.reads import Db, Reader
from openft.store.tables import Job
from openft.weights import BaseWeights

STANDARD_HYPERPARAMETERS = ("batch_size", "learning_rate_multiplier", "n_epochs")


@dataclass(frozen=True)
class CheckedJob:
    """A job request that passed every check that needs the database."""

    spec: JobSpec
    """As requested, with a continued model's training type and LoRA shape filled in."""
    base_model: str | None
    """The root base model when ``spec.model`` is a fine-tuned model or checkpoint."""
    base: BaseWeights
    training: Any
    validation: Any | None
    start_key: str | None
    """The continued model's weights (blob key), if any."""
    shared_start: str | None = None
    """The continued model when it is a checkpoint another organisation shared."""


class GraderCheck(Protocol):
    """What job requests need of the graders service: a reinforcement job's
    grader checked for its organisation, with defaults filled in (a 400
    pointing into it otherwise). ``openft.services.graders.GraderService``."""

    async def checked(self, reader: Reader, org_id: str, grader: Any,
                      param: str) -> tuple[dict[str, Any], Any]: ...


async def with_checked_grader(spec: JobSpec, org_id: str, graders: GraderCheck, reader: Reader) -> JobSpec:
    """A job request's first check (create and estimate), before its
    transaction opens: a reinforcement job's grader checked for the
    organisation and given its defaults. A python grader's source is parsed
    in a sandbox and judge models are resolved (perhaps fetched) on the
    reader, so no transaction or pool slot waits on either."""
    if spec.method.grader is None:
        return spec
    grader, _ = await graders.checked(reader, org_id, spec.method.grader, "method.reinforcement.grader")
    return replace(spec, method=spec.method.with_grader(grader))


async def check_job(
    session: AsyncSession, registry: ModelRegistry, org_id: str, spec: JobSpec, *, executor: str = "local",
) -> CheckedJob:
    """Every check of a job request that needs its transaction (create and
    estimate share them; :func:`with_checked_grader` came first).
    ``executor``: the deployment's (``OPENFT_EXECUTOR``); only Ray places
    jobs on the ``resources`` they ask for, so elsewhere asking is an error."""
    if spec.resources and executor != "ray":
        raise InvalidRequest(
            "This server runs jobs with the local executor, which trains each job in one process "
            "on the worker's own machine; 'resources' (workers, cpus_per_worker, gpus_per_worker) "
            "needs a deployment with OPENFT_EXECUTOR=ray. Remove 'resources' to create the job.",
            param="resources",
            code="unsupported_resources",
        )
    _check_early_stopping(spec)
    _check_integrations(spec)
    base_model, start_key, shared_start = None, None, None
    if spec.model.startswith("ft:"):
        spec, base_model, start_key, shared_start = await _continuing(session, org_id, spec)
    base = await registry.check_trainable(session, base_model or spec.model)
    capabilities = await registry.capabilities(base)
    problem = capabilities and families.refusal(capabilities, spec.method_type.value, spec.method.hyperparameters)
    if problem:
        field_name, reason = problem
        raise InvalidRequest(
            f"Model {base.id!r} ({capabilities.architecture}) cannot be fine-tuned this way: {reason}.",
            param=f"{spec.method.where}.{field_name}" if field_name else "method.type",
            code="unsupported_model_method",
        )
    training = await _usable_file(session, org_id, spec.training_file, "training_file", spec)
    if (training.n_examples or 0) < domain.MIN_TRAINING_EXAMPLES:
        raise InvalidRequest(
            f"Training file {training.id} has {training.n_examples} examples; "
            f"at least {domain.MIN_TRAINING_EXAMPLES} are required.",
            param="training_file",
            code="invalid_n_examples",
        )
    if spec.method_type is MethodType.REINFORCEMENT and spec.validation_file is None:
        raise InvalidRequest(
            "Reinforcement fine-tuning needs a validation file (prompts in the same format as the "
            "training file): its mean reward is how the job's progress is measured.",
            param="validation_file",
            code="missing_validation_file",
        )
    validation = None
    if spec.validation_file is not None:
        validation = await _usable_file(session, org_id, spec.validation_file, "validation_file", spec)
    return CheckedJob(spec, base_model, base, training, validation, start_key, shared_start)


async def create_job(
    session: AsyncSession,
    registry: ModelRegistry,
    org_id: str,
    spec: JobSpec,
    *,
    request_metadata: dict[str, str] | None = None,
    executor: str = "local",
) -> Job:
    """Check the request against the database, then insert the job and queue it."""
    checked = await check_job(session, registry, org_id, spec, executor=executor)
    spec, base_model = checked.spec, checked.base_model

    now = datetime.now(UTC)
    job = Job(
        id=domain.new_id("job"),
        org_id=org_id,
        model=spec.model,
        training_file=spec.training_file,
        validation_file=spec.validation_file,
        status=JobStatus.VALIDATING_FILES.value,
        method=spec.method,
        suffix=spec.suffix,
        seed=spec.seed,
        metadata_=spec.metadata,
        integrations=spec.integrations,
        resources=spec.resources,
        base_model=base_model,
        shared_start=checked.shared_start,
        result_files=[],
        created_at=now,
        updated_at=now,
    )
    event_data = {"x_tfy_metadata": request_metadata} if request_metadata else None
    await job_queries.create_job(session, job, event_data=event_data)
    files = ", ".join(f for f in (spec.training_file, spec.validation_file) if f)
    await job_queries.add_event(session, job.id, f"Validating training file: {files}")
    return await job_queries.transition_job(
        session,
        job.id,
        JobStatus.QUEUED,
        message="Files validated, moving job to queued state",
        action="queue",
    )


def _public_integrations(integrations: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The job's integrations as its creator sent them (an eval's stored items stay internal)."""
    if not integrations:
        return None
    from openft.evals.config import JobEval

    return [{**i, "eval": {k: v for k, v in i["eval"].items() if k not in JobEval.INTERNAL}} if i["type"] == "eval"
            else i for i in integrations]


def _check_integrations(spec: JobSpec) -> None:
    """An integration whose client library this server lacks would log nothing: refused."""
    for index, integration in enumerate(spec.integrations or []):
        if extra := missing_package(integration["type"]):
            raise InvalidRequest(
                f"This server cannot log to {integration['type']}: its client library is not installed "
                f"(pip install '{extra}').", param=f"integrations.{index}.type", code="unsupported_integration",
            )


def _check_early_stopping(spec: JobSpec) -> None:
    """Early stopping and the best checkpoint go by the validation loss: they
    need a validation file, and reinforcement has rewards, not a loss."""
    for name in ("early_stopping_patience", "fine_tuned_model_from"):
        if spec.method.hyperparameters.get(name) in (None, "last", "best_eval_pass_rate"):
            continue  # the eval's pass rate: checked with the job's eval (services.evals.check_job_eval)
        param = f"{spec.method.where}.{name}"
        if spec.method_type is MethodType.REINFORCEMENT:
            raise InvalidRequest(f"{name} applies to supervised and dpo jobs, which have a validation "
                                 "loss; reinforcement jobs are measured by reward.", param=param)
        if spec.validation_file is None:
            raise InvalidRequest(f"{name} goes by the validation loss, so the job needs a "
                                 "validation_file.", param=param)


async def _continuing(session: AsyncSession, org_id: str, spec: JobSpec) -> tuple[JobSpec, str, str, str | None]:
    """A job that continues a fine-tuned model or checkpoint of the
    organisation: (the spec with the earlier model's training type and LoRA
    shape filled in, the base model at the root of its lineage, its weights' key). A LoRA model
    continues as LoRA with the same rank and alpha (its adapter keeps
    training, so serving stays one adapter on the base) or as a full
    fine-tune of the merged weights; a full fine-tune continues as a full one.
    The fourth value: the model, when it is a checkpoint another organisation shared."""
    tuned = await model_queries.read_tuned_weights(session, org_id, spec.model)
    if tuned is None:
        raise NotFound("model", spec.model, param="model")
    own = await model_queries.read_tuned_weights(session, org_id, spec.model, shared=False) is not None
    # A shared checkpoint's job is the owner's: read for its LoRA shape only, never shown.
    parent = (await job_queries.read_job(session, org_id, tuned.job_id) if own
              else await job_queries.read_job_any_org(session, tuned.job_id))
    earlier = dict(parent.resolved_hyperparameters or {}) if parent is not None else {}
    requested = dict(spec.method.hyperparameters)
    where = spec.method.where
    training_type = requested.get("training_type") or earlier.get("training_type", "lora")
    if earlier.get("training_type") == "full" and training_type == "lora":
        raise InvalidRequest(
            f"{spec.model} is a full fine-tune; a job continuing it trains all its weights "
            "(training_type 'full').", param=f"{where}.training_type",
        )
    requested["training_type"] = training_type
    if training_type == "lora" and earlier.get("training_type") == "lora":
        for name in ("lora_rank", "lora_alpha"):
            if requested.get(name) is not None and float(requested[name]) != float(earlier[name]):
                raise InvalidRequest(
                    f"{spec.model} is a LoRA adapter with {name} {earlier[name]:g}; a job continuing "
                    f"it keeps training that adapter, so {name} must be {earlier[name]:g} or omitted.",
                    param=f"{where}.{name}",
                )
            requested[name] = earlier[name]
    return (replace(spec, method=spec.method.with_hyperparameters(requested)), tuned.base_model, tuned.storage_key,
            None if own else spec.model)


async def _usable_file(
    session: AsyncSession, org_id: str, file_id: str, param: str, spec: JobSpec
) -> Any:
    # Touch first: holds the row until commit, so the file cannot be deleted under us.
    row = None
    if await file_queries.touch_file(session, org_id, file_id):
        row = await file_queries.read_file(session, org_id, file_id)
    if row is None:
        raise InvalidRequest(f"No such file: {file_id}", param=param, code="file_not_found")
    if row.purpose != "fine-tune" or row.format is None:
        raise InvalidRequest(
            f"File {file_id} was uploaded with purpose {row.purpose!r}; "
            "fine-tuning files need purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    allowed = domain.FORMATS_FOR_METHOD[spec.method_type]
    if FileFormat(row.format) not in allowed:
        raise InvalidRequest(
            f"File {file_id} is in {row.format} format, but method {spec.method_type.value!r} "
            f"needs {' or '.join(sorted(f.value for f in allowed))} format.",
            param=param,
            code="invalid_file_format",
        )
    return row


async def get_job(db: Db, org_id: str, job_id: str) -> Any:
    """The job (a read-only row with Job's attribute names); NotFound if not the org's."""
    job = await job_queries.read_job(db, org_id, job_id)
    if job is None:
        raise NotFound("fine_tuning_job", job_id)
    return job


_USER_ACTIONS = {
    "cancel": (JobStatus.CANCELLED, "Fine-tuning job cancelled"),
    "pause": (JobStatus.PAUSED, "Fine-tuning job paused"),
    "resume": (JobStatus.QUEUED, "Fine-tuning job resumed, moving job to queued state"),
}
RESUMABLE = (JobStatus.PAUSED,)
"""Resume moves a paused job only: the table also lets a worker re-queue a
running job, which is not the user's move to make."""


async def apply_user_action(session: AsyncSession, org_id: str, job_id: str, action: str) -> Job:
    """cancel, pause or resume; an illegal move for the job's status is a Conflict."""
    target, message = _USER_ACTIONS[action]
    guard = [Job.status.in_([s.value for s in RESUMABLE])] if action == "resume" else None
    return await job_queries.transition_job(
        session, job_id, target, message=message, action=action, org_id=org_id, guard=guard
    )


async def list_jobs(
    db: Db,
    org_id: str,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    metadata_is_null: bool,
    gateway: bool,
    status: str | None = None,
) -> ListFineTuningJobsResponse:
    page = await job_queries.list_jobs(
        db,
        org_id,
        after=after,
        limit=limit,
        metadata=metadata,
        metadata_is_null=metadata_is_null,
        status=status,
    )
    return ListFineTuningJobsResponse(
        data=[job_to_wire(job, gateway=gateway) for job in page.items], has_more=page.has_more
    )


async def list_events(
    db: Db, org_id: str, job_id: str, *, after: str | None, limit: int
) -> ListFineTuningJobEventsResponse:
    await get_job(db, org_id, job_id)
    page = await job_queries.list_events(db, job_id, after=after, limit=limit)
    return ListFineTuningJobEventsResponse(
        data=[event_to_wire(e) for e in page.items], has_more=page.has_more
    )


async def list_checkpoints(
    db: Db, org_id: str, job_id: str, *, after: str | None, limit: int
) -> ListFineTuningJobCheckpointsResponse:
    await get_job(db, org_id, job_id)
    page = await job_queries.list_checkpoints(db, job_id, after=after, limit=limit)
    data = [checkpoint_to_wire(c) for c in page.items]
    return ListFineTuningJobCheckpointsResponse(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_to_wire(job: Any, *, gateway: bool = False) -> FineTuningJob:
    """The spec's FineTuningJob. On the gateway surface (/api/llm) the status
    stays within the gateway's enum (validating_files and paused read queued)."""
    status = JobStatus(job.status)
    if gateway:
        status = domain.GATEWAY_STATUS.get(status, status)
    method: domain.Method = job.method
    if job.resolved_hyperparameters:
        method = method.with_hyperparameters({**method.hyperparameters, **job.resolved_hyperparameters})
    hyper = method.hyperparameters
    return FineTuningJob(
        id=job.id,
        created_at=int(job.created_at.timestamp()),
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=_ts(job.finished_at),
        hyperparameters=JobHyperparameters(**{k: hyper[k] for k in STANDARD_HYPERPARAMETERS}),
        model=job.model,
        organization_id=job.org_id,
        result_files=list(job.result_files),
        status=status.value,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        integrations=_public_integrations(job.integrations),
        seed=job.seed,
        estimated_finish=_ts(job.estimated_finish),
        method=method.to_wire(),
        metadata=job.metadata_,
        user_provided_suffix=job.suffix,
        resources=job.resources,
    )


def event_to_wire(event: Any) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=event.id,
        created_at=int(event.created_at.timestamp()),
        level=event.level,  # type: ignore[arg-type]
        message=event.message,
        type=event.type,  # type: ignore[arg-type]
        data=event.data or {},
    )


def checkpoint_to_wire(checkpoint: Any) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=checkpoint.id,
        created_at=int(checkpoint.created_at.timestamp()),
        fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
        fine_tuning_job_id=checkpoint.job_id,
        metrics=checkpoint.metrics,
        step_number=checkpoint.step_number,
    )
