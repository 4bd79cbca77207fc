"""The Evals API: evals (a data shape and testing criteria), their runs and
the runs' output items, for one organisation at a time.

Everything that can be wrong with a request is a 400 here, pointing into it:
the ``data_source_config`` and each criterion (``openft.evals.criteria``;
python sources are parsed in the sandbox and judge models resolved for the
organisation by the graders service, as for RFT), a run's data source, its
model and sampling parameters, and every item, checked against the eval's
``item_schema`` with its line (``openft.evals.items``). A run's items are
then stored with it and the run is queued: a worker executes it
(``openft.scheduler.evals``), never this process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from openft import domain
from openft.config import Settings
from openft.domain import EvalRunStatus
from openft.errors import Conflict, InvalidRequest, NotFound, RateLimited
from openft.evals import criteria, items, tally
from openft.evals.config import SAMPLING_PARAMS, JobEval
from openft.graders import spec
from openft.schemas.evals import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    DeletedEval,
    DeletedEvalRun,
    Eval,
    EvalList,
    EvalRun,
    EvalRunList,
    EvalRunOutputItem,
    EvalRunOutputItemList,
    UpdateEvalRequest,
)
from openft.services.capacity import Capacity
from openft.store.queries import evals as queries
from openft.store.queries import files as file_queries
from openft.store.queries.reads import Db
from openft.store.tables import Eval as EvalRow
from openft.store.tables import EvalRun as EvalRunRow
from openft.text import first_bad_path, storable

if TYPE_CHECKING:
    from openft.domain import JobSpec
    from openft.services.graders import GraderService
    from openft.services.models import ModelRegistry
    from openft.store.blobs import BlobStore


class EvalsContext(Protocol):
    """What the evals service uses of the API's context (``api.context.EvalsContext`` is one)."""

    settings: Settings
    blobs: BlobStore
    registry: ModelRegistry
    graders: GraderService
    evals: Capacity
    wake_worker: Callable[[], None]

    def reader(self) -> AbstractAsyncContextManager[Db]: ...

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]: ...



RUNS_OF_A_JOB = 100
"""The newest runs a job's page lists."""


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


# ------------------------------------------------------------------- evals
async def create_eval(ctx: EvalsContext, org_id: str, body: CreateEvalRequest) -> Eval:
    check_storable(body.model_dump(exclude_none=True), "")
    config = criteria.check_config(body.data_source_config)
    stored = []
    for index, (grader, threshold) in enumerate(criteria.split_threshold(body.testing_criteria)):
        checked, _ = await ctx.graders.checked(ctx.reader, org_id, grader, f"testing_criteria.{index}",
                                               allowed=criteria.CRITERION_TYPES)
        stored.append(criteria.with_id(checked, threshold))
    now = datetime.now(UTC)
    eval_id = domain.new_id("eval")
    row = EvalRow(id=eval_id, org_id=org_id, name=body.name or eval_id, data_source_config=config,
                  testing_criteria=stored, metadata_=body.metadata, created_at=now, updated_at=now)
    async with ctx.transaction() as session:
        await queries.add(session, row)
    return eval_to_wire(row)


async def get_eval_row(ctx: EvalsContext, org_id: str, eval_id: str) -> Any:
    async with ctx.reader() as db:
        row = await queries.read_eval(db, org_id, eval_id)
    if row is None:
        raise NotFound("eval", eval_id)
    return row


async def update_eval(ctx: EvalsContext, org_id: str, eval_id: str, body: UpdateEvalRequest) -> Eval:
    check_storable(body.model_dump(exclude_none=True), "")
    values: dict[str, Any] = {}
    if body.name is not None:
        values["name"] = body.name
    if "metadata" in body.model_fields_set:
        values["metadata_"] = body.metadata
    async with ctx.transaction() as session:
        if await queries.read_eval(session, org_id, eval_id) is None:
            raise NotFound("eval", eval_id)
        if values:
            await queries.update_eval(session, org_id, eval_id, **values, updated_at=datetime.now(UTC))
        return eval_to_wire(await queries.read_eval(session, org_id, eval_id))


async def list_evals(ctx: EvalsContext, org_id: str, *, after: str | None, limit: int, order: str,
                     order_by: str) -> EvalList:
    async with ctx.reader() as db:
        page = await queries.list_evals(db, org_id, after=after, limit=limit, order=order, order_by=order_by)
    data = [eval_to_wire(r) for r in page.items]
    return EvalList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                    has_more=page.has_more)


async def delete_eval(ctx: EvalsContext, org_id: str, eval_id: str) -> DeletedEval:
    async with ctx.transaction() as session:
        if await queries.read_eval(session, org_id, eval_id) is None:
            raise NotFound("eval", eval_id)
        keys = await queries.delete_eval(session, org_id, eval_id)
    await anyio.to_thread.run_sync(_delete_blobs, ctx, keys)
    return DeletedEval(deleted=True, eval_id=eval_id)


def eval_to_wire(row: Any) -> Eval:
    return Eval(id=row.id, name=row.name, data_source_config=row.data_source_config,
                testing_criteria=row.testing_criteria, created_at=_epoch(row.created_at), metadata=row.metadata_)


# -------------------------------------------------------------------- runs
async def create_run(ctx: EvalsContext, org_id: str, eval_id: str, body: CreateEvalRunRequest,
                     base_url: str) -> EvalRun:
    evaluation = await get_eval_row(ctx, org_id, eval_id)
    check_storable(body.model_dump(exclude_none=True), "")
    async with ctx.reader() as db:
        _room_for_a_run(ctx, await queries.count_unfinished_runs(db, org_id))
    load_rows, model, input_messages, sampling = await _checked_source(ctx, org_id, body.data_source)
    item_schema = evaluation.data_source_config["schema"]["properties"]["item"]
    run_id = domain.new_id("eval_run")
    key = f"eval-runs/{run_id}/items.jsonl"

    def check_and_store() -> list[items.RunItem]:  # blocking: reading, checking and rendering every item
        checked = items.check_rows(load_rows(), item_schema, input_messages=input_messages,
                                   needs_sample=criteria.uses_sample(evaluation.testing_criteria))
        _write_items(ctx, key, checked)
        return checked

    async with ctx.evals.slot(org_id):
        checked = await ctx.evals.run_sync(check_and_store)
    now = datetime.now(UTC)
    data_source = dict(body.data_source)
    if input_messages is not None:
        data_source["input_messages"] = items.echoed(input_messages)
    if sampling is not None:
        data_source["sampling_params"] = sampling  # as checked: a null is left out (its default)
    row = EvalRunRow(
        id=run_id, eval_id=eval_id, org_id=org_id, name=body.name or model or "jsonl", model=model,
        status=EvalRunStatus.QUEUED.value, data_source=data_source, metadata_=body.metadata, items_key=key,
        total_items=len(checked), error=None, created_at=now, updated_at=now, attempts=0,
        **tally.empty(evaluation.testing_criteria))
    try:
        async with ctx.transaction() as session:
            if await queries.read_eval(session, org_id, eval_id) is None:
                raise NotFound("eval", eval_id)
            _room_for_a_run(ctx, await queries.count_unfinished_runs(session, org_id))  # again: two requests raced
            await queries.add(session, row)
    except BaseException:
        await anyio.to_thread.run_sync(_delete_blobs, ctx, [key])
        raise
    ctx.wake_worker()
    return run_to_wire(row, base_url)


RowLoader = Callable[[], list[items.SourceRow]]
"""Reads a source's rows (blocking: a file is read and parsed); run off the event loop."""


def check_storable(value: Any, prefix: str) -> None:
    """A 400 naming the first string of a request's ``value`` that no stored text may hold."""
    if (where := first_bad_path(value, storable, prefix)) is not None:
        raise InvalidRequest(f"Invalid '{where}': the text holds a NUL character or a lone surrogate, which no "
                             "stored text may hold.", param=where, code="invalid_value")


def _room_for_a_run(ctx: EvalsContext, unfinished: int) -> None:
    if unfinished >= ctx.settings.max_queued_eval_runs_per_org:
        raise RateLimited(f"Your organisation has {unfinished} eval runs queued or in progress, the most it may "
                          "have (OPENFT_MAX_QUEUED_EVAL_RUNS_PER_ORG); wait for some to end.", retry_after=30)


async def _checked_source(ctx: EvalsContext, org_id: str, data_source: Any
                          ) -> tuple[RowLoader, str | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(what reads the source's rows, the model, input_messages and sampling_params of a completions run)."""
    param = "data_source"
    if not isinstance(data_source, dict):
        raise spec.invalid(param, "must be an object with a 'type' (jsonl or completions)", code="invalid_value")
    kind = data_source.get("type")
    if kind == "responses":
        raise InvalidRequest("Invalid 'data_source.type': 'responses' runs sample through OpenAI's Responses API, "
                             "which openft does not serve; use 'completions'.", param="data_source.type",
                             code="unsupported_data_source")
    if kind not in ("jsonl", "completions"):
        raise spec.invalid(f"{param}.type", f"must be 'jsonl' or 'completions', got {kind!r}", code="invalid_value")
    allowed = {"type", "source"} | ({"model", "input_messages", "sampling_params"} if kind == "completions" else set())
    if unknown := sorted(set(data_source) - allowed):
        raise spec.invalid(f"{param}.{unknown[0]}", f"is not a field of a {kind} data source", code="invalid_value")
    rows = await _rows(ctx, org_id, data_source.get("source"), f"{param}.source")
    if kind == "jsonl":
        return rows, None, None, None
    model = data_source.get("model")
    if not isinstance(model, str) or not model:
        raise spec.invalid(f"{param}.model", "is required: the model to sample, as chat completions names it",
                           code="invalid_value")
    async with ctx.reader() as db:
        try:
            ref = await ctx.registry.resolve(db, org_id, model)
        except NotFound:
            raise InvalidRequest(f"Invalid 'data_source.model': the model {model!r} does not exist or is not "
                                 "available to your organisation.", param="data_source.model",
                                 code="model_not_found") from None
    found = await anyio.to_thread.run_sync(ctx.registry.describe, ref.id, ref.base_path)
    if found is not None and (refusal := found.refusals.get("serving")):  # as chat completions refuses it
        raise InvalidRequest(f"The model {model!r} cannot be served: {refusal}.", param="data_source.model",
                             code="model_not_servable")
    if "input_messages" not in data_source:
        raise spec.invalid(f"{param}.input_messages", "is required for a completions run", code="invalid_value")
    input_messages = items.check_input_messages(data_source["input_messages"], f"{param}.input_messages")
    return rows, model, input_messages, _sampling(data_source.get("sampling_params"), model)


async def check_job_eval(ctx: EvalsContext, org_id: str, job: JobSpec, *, store: bool = True) -> JobSpec:
    """A job's ``eval`` integration (an openft extension), checked as a run
    would be: the eval exists for the organisation, the data source (without
    a model: each kept checkpoint is sampled) and every item are valid. Its
    items are stored now (``store``; not for an estimate) and the job keeps
    their key. ``fine_tuned_model_from: best_eval_pass_rate`` needs one."""
    from dataclasses import replace

    where = f"{job.method.where}.fine_tuned_model_from"
    found = [(i, x) for i, x in enumerate(job.integrations or []) if x["type"] == "eval"]
    if not found:
        if job.method.hyperparameters.get("fine_tuned_model_from") == "best_eval_pass_rate":
            raise InvalidRequest(f"Invalid '{where}': best_eval_pass_rate picks the checkpoint with the best pass "
                                 "rate of the job's eval; add an integration of type 'eval'.", param=where,
                                 code="missing_eval")
        return job
    index, integration = found[-1]
    param = f"integrations.{index}"
    if len(found) > 1:
        raise InvalidRequest(f"Invalid '{param}': a job runs at most one eval on its checkpoints.", param=param)
    if job.method_type.value not in ("supervised", "dpo"):
        raise InvalidRequest(f"Invalid '{param}.type': evals run on the checkpoints of supervised and dpo jobs; "
                             "a reinforcement job is measured by its grader.", param=f"{param}.type",
                             code="unsupported_integration")
    settings = integration["eval"]
    async with ctx.reader() as db:
        evaluation = await queries.read_eval(db, org_id, settings["eval_id"])
    if evaluation is None:
        raise InvalidRequest(f"Invalid '{param}.eval.eval_id': no such eval: {settings['eval_id']}.",
                             param=f"{param}.eval.eval_id", code="eval_not_found")
    data_source, at = settings["data_source"], f"{param}.eval.data_source"
    check_storable(data_source, at)
    if unknown := sorted(set(data_source) - {"type", "source", "input_messages", "sampling_params"}):
        why = "each checkpoint is the model" if unknown[0] == "model" else "is not a field of it"
        raise spec_invalid(f"{at}.{unknown[0]}", why)
    if data_source.get("type", "completions") != "completions":
        raise spec_invalid(f"{at}.type", "must be 'completions': the checkpoints are sampled")
    load_rows = await _rows(ctx, org_id, data_source.get("source"), f"{at}.source")
    input_messages = items.check_input_messages(data_source.get("input_messages"), f"{at}.input_messages")
    sampling = _sampling(data_source.get("sampling_params"), job.model, f"{at}.sampling_params")
    schema = evaluation.data_source_config["schema"]["properties"]["item"]
    async with ctx.evals.slot(org_id):
        checked = await ctx.evals.run_sync(lambda: items.check_rows(load_rows(), schema, needs_sample=False,
                                                                    input_messages=input_messages))
    stored = JobEval(evaluation.id, {
        "type": "completions", "source": data_source["source"], "input_messages": items.echoed(input_messages),
        "sampling_params": sampling})
    if store:
        stored = replace(stored, items_key=f"job-evals/{domain.new_id('eval_run')}/items.jsonl",
                         n_items=len(checked))
        await ctx.evals.run_sync(lambda: _write_items(ctx, stored.items_key, checked))
    integrations = list(job.integrations or [])
    integrations[index] = {"type": "eval", "eval": stored.to_dict()}
    return replace(job, integrations=integrations)


async def forget_job_eval(ctx: EvalsContext, job: JobSpec) -> None:
    """Delete the items :func:`check_job_eval` stored for a job that was not created."""
    if (stored := JobEval.of(job.integrations)) is not None and stored.items_key:
        await anyio.to_thread.run_sync(ctx.blobs.delete, stored.items_key)


def spec_invalid(param: str, message: str) -> InvalidRequest:
    """A 400 pointing at ``param`` (``invalid_value``)."""
    return spec.invalid(param, message, code="invalid_value")


def _sampling(given: Any, model: str, param: str = "data_source.sampling_params") -> dict[str, Any]:
    """The sampling parameters, checked as a chat completion request checks them."""
    from openft.schemas.chat import ChatCompletionRequest

    if given is None:
        return {}
    if not isinstance(given, dict):
        raise spec.invalid(param, "must be an object", code="invalid_value")
    if unknown := sorted(set(given) - set(SAMPLING_PARAMS)):
        raise spec.invalid(f"{param}.{unknown[0]}", "is not a sampling parameter of a completions run "
                           f"({', '.join(SAMPLING_PARAMS)})", code="invalid_value")
    if (t := given.get("temperature")) is not None and (
            isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2):
        raise spec.invalid(f"{param}.temperature", "must be a number between 0 and 2", code="invalid_value")
    try:
        ChatCompletionRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "x"}],
                                              **given})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise spec.invalid(f"{param}.{where}" if where else param, error["msg"], code="invalid_value") from None
    return {k: v for k, v in given.items() if v is not None}  # null: the default, as OpenAI reads it


async def _rows(ctx: EvalsContext, org_id: str, source: Any, param: str) -> RowLoader:
    if not isinstance(source, dict):
        raise spec.invalid(param, "must be an object with a 'type' (file_content or file_id)", code="invalid_value")
    kind = source.get("type")
    if kind == "file_content":
        rows = items.inline_rows(source.get("content"), f"{param}.content")
        return lambda: rows
    if kind == "file_id":
        file_id = source.get("id")
        if not isinstance(file_id, str):
            raise spec.invalid(f"{param}.id", "must be a file id", code="invalid_value")
        async with ctx.reader() as db:
            row = await file_queries.read_file(db, org_id, file_id)
        if row is None:
            raise InvalidRequest(f"Invalid '{param}.id': the file {file_id!r} does not exist.",
                                 param=f"{param}.id", code="file_not_found")
        if row.bytes > items.MAX_SOURCE_BYTES:
            raise InvalidRequest(f"Invalid '{param}.id': the file {file_id} is larger than a run reads "
                                 f"({items.MAX_SOURCE_BYTES >> 20} MiB); split it into several runs.",
                                 param=f"{param}.id", code="file_too_large")
        return lambda: items.file_rows(_read_blob(ctx, row.storage_key), file_id, f"{param}.id")
    if kind == "stored_completions":
        raise InvalidRequest(f"Invalid '{param}.type': openft stores no completions; upload them as a jsonl file "
                             "and use a 'file_id' source.", param=f"{param}.type", code="unsupported_data_source")
    raise spec.invalid(f"{param}.type", f"must be 'file_content' or 'file_id', got {kind!r}", code="invalid_value")


def _read_blob(ctx: EvalsContext, key: str) -> bytes:
    with ctx.blobs.open(key) as stream:
        return stream.read()


def _write_items(ctx: EvalsContext, key: str, checked: list[items.RunItem]) -> None:
    with ctx.blobs.writer(key) as writer:
        for item in checked:
            writer.write((json.dumps(item.to_dict(), separators=(",", ":")) + "\n").encode())


def _delete_blobs(ctx: EvalsContext, keys: list[str]) -> None:
    """Delete runs' item blobs (a job's eval items, shared by its runs, stay with the job)."""
    for key in keys:
        if key.startswith("job-evals/"):
            continue
        try:
            ctx.blobs.delete(key)
        except FileNotFoundError:
            pass


async def get_run_row(ctx: EvalsContext, org_id: str, eval_id: str, run_id: str) -> Any:
    async with ctx.reader() as db:
        row = await queries.read_run(db, org_id, eval_id, run_id)
    if row is None:
        raise NotFound("eval_run", run_id)
    return row


async def list_runs(ctx: EvalsContext, org_id: str, eval_id: str, base_url: str, *, after: str | None, limit: int,
                    order: str, status: str | None) -> EvalRunList:
    await get_eval_row(ctx, org_id, eval_id)
    async with ctx.reader() as db:
        page = await queries.list_runs(db, org_id, eval_id, after=after, limit=limit, order=order, status=status)
    data = [run_to_wire(r, base_url) for r in page.items]
    return EvalRunList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                       has_more=page.has_more)


async def runs_of_job(ctx: EvalsContext, org_id: str, job_id: str, base_url: str) -> EvalRunList:
    """An openft extension: the eval runs that sampled the job's fine-tuned
    model or one of its checkpoints, newest first (the job page's "Evals")."""
    from openft.services.jobs import get_job
    from openft.store.queries import jobs as job_queries

    async with ctx.reader() as db:
        job = await get_job(db, org_id, job_id)
        checkpoints = await job_queries.list_checkpoints(db, job_id, after=None, limit=1000)
        models = [c.fine_tuned_model_checkpoint for c in checkpoints.items]
        models += [job.fine_tuned_model] if job.fine_tuned_model else []
        rows = await queries.runs_of_models(db, org_id, models, RUNS_OF_A_JOB + 1) if models else []
    data = [run_to_wire(r, base_url) for r in rows[:RUNS_OF_A_JOB]]
    return EvalRunList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                       has_more=len(rows) > RUNS_OF_A_JOB)


async def cancel_run(ctx: EvalsContext, org_id: str, eval_id: str, run_id: str, base_url: str) -> EvalRun:
    row = await get_run_row(ctx, org_id, eval_id, run_id)
    async with ctx.transaction() as session:
        if not await queries.cancel_run(session, org_id, run_id):
            raise Conflict(f"The eval run {run_id} has already ended ({row.status}); only a queued or "
                           "in-progress run can be canceled.", param="run_id", code="invalid_state")
    return run_to_wire(await get_run_row(ctx, org_id, eval_id, run_id), base_url)


async def delete_run(ctx: EvalsContext, org_id: str, eval_id: str, run_id: str) -> DeletedEvalRun:
    await get_run_row(ctx, org_id, eval_id, run_id)
    async with ctx.transaction() as session:
        # A run in progress is canceled first: its worker stops it at the next heartbeat.
        await queries.cancel_run(session, org_id, run_id)
        key = await queries.delete_run(session, org_id, run_id)
    if key is not None:
        await anyio.to_thread.run_sync(_delete_blobs, ctx, [key])
    return DeletedEvalRun(deleted=True, run_id=run_id)


def run_to_wire(row: Any, base_url: str) -> EvalRun:
    return EvalRun(
        id=row.id, eval_id=row.eval_id, status=row.status, model=row.model, name=row.name,
        created_at=_epoch(row.created_at), report_url=f"{base_url.rstrip('/')}/#/evals/{row.eval_id}?run={row.id}",
        result_counts=row.result_counts, per_model_usage=row.per_model_usage,
        per_testing_criteria_results=row.per_testing_criteria_results, data_source=row.data_source,
        metadata=row.metadata_, error=row.error)


# ------------------------------------------------------------ output items
async def list_items(ctx: EvalsContext, org_id: str, eval_id: str, run_id: str, *, after: str | None, limit: int,
                     order: str, status: str | None) -> EvalRunOutputItemList:
    await get_run_row(ctx, org_id, eval_id, run_id)
    async with ctx.reader() as db:
        page = await queries.list_items(db, run_id, after=after, limit=limit, order=order, status=status)
    data = [item_to_wire(r) for r in page.items]
    return EvalRunOutputItemList(data=data, first_id=data[0].id if data else None,
                                 last_id=data[-1].id if data else None, has_more=page.has_more)


async def get_item(ctx: EvalsContext, org_id: str, eval_id: str, run_id: str, item_id: str) -> EvalRunOutputItem:
    await get_run_row(ctx, org_id, eval_id, run_id)
    async with ctx.reader() as db:
        row = await queries.read_item(db, run_id, item_id)
    if row is None:
        raise NotFound("eval_run_output_item", item_id)
    return item_to_wire(row)


def item_to_wire(row: Any) -> EvalRunOutputItem:
    return EvalRunOutputItem(
        id=row.id, run_id=row.run_id, eval_id=row.eval_id, created_at=_epoch(row.created_at), status=row.status,
        datasource_item_id=row.datasource_item_id, datasource_item=row.datasource_item, results=row.results,
        sample=row.sample)
