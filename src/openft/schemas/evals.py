"""Wire models of the Evals API, as the OpenAI SDK's ``client.evals``,
``client.evals.runs`` and ``client.evals.runs.output_items`` send and read
them (``../shared/reference/openai-evals.openapi.yaml``).

Data source configs, testing criteria and run data sources are polymorphic
objects that :mod:`openft.evals` checks field by field, so that each mistake
is a 400 whose ``param`` points into them (``testing_criteria.2.source``);
they arrive here as plain JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from openft.schemas.common import ClosedRequestModel, WireModel
from openft.schemas.jobs import Metadata

Name = Annotated[str, Field(min_length=1, max_length=256)]


class CreateEvalRequest(ClosedRequestModel):
    name: Name | None = None
    metadata: Metadata = None
    data_source_config: Any
    testing_criteria: Any


class UpdateEvalRequest(ClosedRequestModel):
    name: Name | None = None
    metadata: Metadata = None


class CreateEvalRunRequest(ClosedRequestModel):
    name: Name | None = None
    metadata: Metadata = None
    data_source: Any


class Eval(WireModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None


class EvalList(WireModel):
    object: Literal["list"] = "list"
    data: list[Eval]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedEval(WireModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool
    eval_id: str


class ResultCounts(WireModel):
    total: int
    errored: int
    failed: int
    passed: int


class EvalApiError(WireModel):
    code: str
    message: str


class EvalRun(WireModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: str
    model: str | None
    name: str
    created_at: int
    report_url: str
    result_counts: ResultCounts
    per_model_usage: list[dict[str, Any]]
    per_testing_criteria_results: list[dict[str, Any]]
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    error: EvalApiError | None


class EvalRunList(WireModel):
    object: Literal["list"] = "list"
    data: list[EvalRun]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedEvalRun(WireModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool
    run_id: str


class EvalRunOutputItem(WireModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]


class EvalRunOutputItemList(WireModel):
    object: Literal["list"] = "list"
    data: list[EvalRunOutputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
