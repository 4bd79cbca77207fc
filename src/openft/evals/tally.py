"""One item's verdict, and the run's counts folded from its items.

An item is ``pass`` when every criterion passed, ``error`` when its sample
could not be produced or a grader could not grade it (a python grader that
raised, a judge that failed), and ``fail`` otherwise. ``result_counts``,
``per_testing_criteria_results`` (an errored criterion counts as failed
there) and ``per_model_usage`` grow by each item as the worker records it,
in the same transaction (``store.queries.evals.record_item``).
"""

from __future__ import annotations

from typing import Any

from openft.evals.criteria import passed
from openft.graders.result import GradeResult
from openft.training.records import ModelUsage

PASS, FAIL, ERROR = "pass", "fail", "error"


def result_of(criterion: dict[str, Any], grade: GradeResult) -> dict[str, Any]:
    """An ``EvalRunOutputItemResult``: named by the criterion's id, as OpenAI names it."""
    result: dict[str, Any] = {"name": criterion["id"], "type": criterion["type"], "score": grade.reward,
                              "passed": not grade.failed and passed(criterion, grade.reward), "sample": None}
    if grade.failed:
        result["error"] = {flag: value for flag, value in grade.errors.items() if value not in (False, None)}
    if "label" in grade.scores:
        result["label"] = grade.scores["label"]
    return result


def item_status(results: list[dict[str, Any]], sample_error: bool = False) -> str:
    if sample_error or any("error" in r for r in results):
        return ERROR
    return PASS if all(r["passed"] for r in results) else FAIL


def empty(criteria: list[dict[str, Any]]) -> dict[str, Any]:
    """A new run's counts."""
    return {"result_counts": {"total": 0, "errored": 0, "failed": 0, "passed": 0},
            "per_testing_criteria_results": [{"testing_criteria": c["id"], "passed": 0, "failed": 0}
                                             for c in criteria],
            "per_model_usage": []}


def pass_rate(result_counts: dict[str, int]) -> float | None:
    """Passed items over all graded ones (errored included); None before any."""
    total = result_counts["total"]
    return result_counts["passed"] / total if total else None


def add(counts: dict[str, Any], status: str, results: list[dict[str, Any]],
        usage: dict[str, ModelUsage]) -> dict[str, Any]:
    """``counts`` (the run's three count columns) with one more item."""
    totals = dict(counts["result_counts"])
    totals["total"] += 1
    totals[{PASS: "passed", FAIL: "failed", ERROR: "errored"}[status]] += 1
    per_criterion = [dict(c) for c in counts["per_testing_criteria_results"]]
    by_id = {c["testing_criteria"]: c for c in per_criterion}
    for result in results:
        if (entry := by_id.get(result["name"])) is not None:
            entry["passed" if result["passed"] else "failed"] += 1
    per_model = {u["model_name"]: dict(u) for u in counts["per_model_usage"]}
    for model, spent in usage.items():
        entry = per_model.setdefault(model, {"model_name": model, "invocation_count": 0, "prompt_tokens": 0,
                                             "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})
        entry["invocation_count"] += spent.invocations
        entry["prompt_tokens"] += spent.prompt_tokens
        entry["completion_tokens"] += spent.completion_tokens
        entry["total_tokens"] = entry["prompt_tokens"] + entry["completion_tokens"]
    return {"result_counts": totals, "per_testing_criteria_results": per_criterion,
            "per_model_usage": list(per_model.values())}
