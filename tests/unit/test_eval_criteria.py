"""An eval's criteria without a server: which read the sample, when a
score passes, the data source config as OpenAI serves it."""

from __future__ import annotations

import pytest

from openft.errors import InvalidRequest
from openft.evals import criteria, tally
from openft.training.records import EvalItemRecord, ModelUsage, parse

EXACT = {"type": "string_check", "name": "exact", "id": "exact-1", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}
JUDGE_ON_ITEM = {"type": "label_model", "name": "tone", "id": "tone-1", "model": "m", "labels": ["a", "b"],
                 "passing_labels": ["a"], "input": [{"role": "user", "content": [
                     {"type": "input_text", "text": "Grade this sample of {{item.text}}."}]}]}


def test_only_criteria_that_name_the_sample_need_one() -> None:
    assert criteria.uses_sample([EXACT])
    assert not criteria.uses_sample([JUDGE_ON_ITEM])  # "sample" in its words, not in a variable
    assert criteria.uses_sample([JUDGE_ON_ITEM, {"type": "python", "name": "p", "id": "p-1", "source": ""}])


@pytest.mark.parametrize(("criterion", "score", "passed"), [
    (EXACT, 1.0, True), (EXACT, 0.0, False),
    ({"type": "text_similarity", "pass_threshold": 0.8}, 0.79, False),
    ({"type": "python"}, 0.5, True), ({"type": "python", "pass_threshold": 0.9}, 0.5, False),
    ({"type": "score_model", "range": [0, 10]}, 4.9, False), ({"type": "score_model", "range": [0, 10]}, 5, True),
])
def test_a_score_passes_by_the_criterions_rule(criterion: dict, score: float, passed: bool) -> None:
    assert criteria.passed(criterion, score) is passed


def test_the_config_is_served_as_openai_serves_it_and_stored_sources_are_refused() -> None:
    served = criteria.check_config({"type": "custom", "item_schema": {"type": "object"},
                                    "include_sample_schema": True})
    assert served["schema"]["required"] == ["item", "sample"]
    with pytest.raises(InvalidRequest) as refused:
        criteria.check_config({"type": "stored_completions"})
    assert refused.value.code == "unsupported_data_source"


def test_counts_grow_by_each_item() -> None:
    counts = tally.empty([EXACT])
    counts = tally.add(counts, "pass", [{"name": "exact-1", "passed": True}], {"m": ModelUsage(3, 2, 1)})
    counts = tally.add(counts, "error", [{"name": "exact-1", "passed": False, "error": {}}], {})
    assert counts["result_counts"] == {"total": 2, "errored": 1, "failed": 0, "passed": 1}
    assert counts["per_testing_criteria_results"] == [{"testing_criteria": "exact-1", "passed": 1, "failed": 1}]
    assert counts["per_model_usage"][0]["total_tokens"] == 5 and tally.pass_rate(counts["result_counts"]) == 0.5


def test_an_item_record_crosses_the_pipe_with_its_usage_typed() -> None:
    sent = EvalItemRecord(3, {"q": 1}, "pass", {"output": []}, [], {"judge": ModelUsage(5, 1, 2)})
    got = parse(sent.to_dict())
    assert got == sent and isinstance(got.usage["judge"], ModelUsage)
