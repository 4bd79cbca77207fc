"""Every grader type on hand-made samples with known rewards, and the checks
that point a 400 into a grader. Python graders, which need the sandbox, are
in ``tests/security/test_python_grader.py``."""

from __future__ import annotations

import pytest

from openft.errors import InvalidRequest
from openft.graders import formula, spec, templates
from openft.graders.grader import Grader, GradingContext
from openft.graders.judge import JudgeReply
from openft.graders.sandbox import SandboxLimits
from openft.graders.templates import sample_namespace

LIMITS = SandboxLimits(timeout_seconds=2)


def grade(grader: dict, output: str, item: dict | None = None, **context) -> object:
    checked = spec.validate(grader, cosine_available=True)
    with Grader(checked, GradingContext(LIMITS, **context)) as built:
        return built.grade(sample_namespace(output), item or {})


def check(operation: str, output: str, reference: str) -> float:
    return grade({"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                  "reference": reference, "operation": operation}, output).reward


@pytest.mark.parametrize(("operation", "output", "reference", "reward"), [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0), ("ne", "Lyon", "Paris", 1.0),
    ("ne", "Paris", "Paris", 0.0), ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
    ("ilike", "IT IS PARIS", "paris", 1.0), ("ilike", "Lyon", "paris", 0.0),
])
def test_string_check_operations(operation: str, output: str, reference: str, reward: float) -> None:
    assert check(operation, output, reference) == reward


def test_templates_reach_items_json_samples_and_nested_paths() -> None:
    context = {"item": {"answer": {"city": "Paris", "alts": ["Lutetia"]}, "n": 3},
               "sample": sample_namespace('{"city": "Paris", "n": 3}')}
    assert templates.render("{{ item.answer.city }}/{{item.answer.alts.0}}/{{item.n}}", context) == "Paris/Lutetia/3"
    assert templates.render("{{sample.output_json.city}}", context) == "Paris"
    assert templates.render("{{item.answer}}", context) == '{"city":"Paris","alts":["Lutetia"]}'
    with pytest.raises(templates.TemplateError):
        templates.render("{{item.missing}}", context)
    graded = grade({"type": "string_check", "name": "json", "input": "{{sample.output_json.city}}",
                    "reference": "{{item.answer.city}}", "operation": "eq"}, '{"city": "Paris"}',
                   {"answer": {"city": "Paris"}})
    assert graded.reward == 1.0
    missing = grade({"type": "string_check", "name": "json", "input": "{{sample.output_json.city}}",
                     "reference": "{{item.nope}}", "operation": "eq"}, '{"city": "Paris"}')
    assert missing.reward == 0.0 and missing.errors["invalid_variable_error"] is True


@pytest.mark.parametrize(("metric", "output", "reference", "expected"), [
    ("fuzzy_match", "kitten", "sitting", 1 - 5 / 13),  # Indel distance 5 over 13 characters
    ("fuzzy_match", "same text", "same text", 1.0),
    ("bleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("bleu", "completely different words", "the cat sat on the mat", 0.0),
    ("gleu", "the cat sat", "the cat sat", 1.0),
    ("rouge_1", "the cat sat", "the cat ran", 2 / 3),
    ("rouge_2", "the cat sat", "the cat ran", 1 / 2),
    ("rouge_l", "a b c d", "a c d", 2 * (3 / 4) * 1 / (3 / 4 + 1)),
    ("rouge_5", "one two three four five", "one two three four five", 1.0),
])
def test_text_similarity_metrics(metric: str, output: str, reference: str, expected: float) -> None:
    graded = grade({"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}",
                    "reference": reference, "evaluation_metric": metric}, output)
    assert graded.reward == pytest.approx(expected, abs=1e-6)


def test_meteor_rewards_overlap_and_order() -> None:
    def meteor(output: str) -> float:
        return grade({"type": "text_similarity", "name": "m", "input": "{{sample.output_text}}",
                      "reference": "the quick brown fox jumps", "evaluation_metric": "meteor"}, output).reward

    assert meteor("the quick brown fox jumps") > 0.95
    assert meteor("the quick brown fox jumps") > meteor("fox brown quick the jumps") > meteor("nothing alike here") == 0


def test_cosine_with_an_embedding_model(tiny_model_dir) -> None:
    graded = grade({"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}",
                    "reference": "{{item.ref}}", "evaluation_metric": "cosine"},
                   "a sentence", {"ref": "a sentence"}, embedding_model=tiny_model_dir)
    assert graded.reward == pytest.approx(1.0, abs=1e-5)
    other = grade({"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}",
                   "reference": "zebra quantum 1234", "evaluation_metric": "cosine"},
                  "a sentence", embedding_model=tiny_model_dir)
    assert other.reward < 0.999
    with pytest.raises(InvalidRequest) as refused:
        spec.validate({"type": "text_similarity", "name": "c", "input": "x", "reference": "y",
                       "evaluation_metric": "cosine"})
    assert refused.value.param == "grader.evaluation_metric" and "OPENFT_GRADER_EMBEDDING_MODEL" in str(refused.value)


PY_EXACT = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['label'] else 0.0\n"


class FakeJudge:
    """Answers with a fixed text and records what it was asked."""

    def __init__(self, text: str):
        self.text, self.calls = text, []

    def __call__(self, model, messages, params, grammar) -> JudgeReply:
        self.calls.append((model, messages, params, grammar))
        return JudgeReply(self.text, prompt_tokens=10, completion_tokens=4)


SCORE = {"type": "score_model", "name": "judge", "model": "local/judge", "range": [0, 10],
         "input": [{"role": "system", "content": "Rate the answer."},
                   {"role": "user", "content": [
                       {"type": "input_text", "text": "Q: {{item.q}} A: {{sample.output_text}}"}]}],
         "sampling_params": {"temperature": 0.5, "seed": 7, "max_completions_tokens": 20}}


def test_score_model_parses_the_judge_and_counts_tokens() -> None:
    judge = FakeJudge('{"result": 7.5}')
    graded = grade(SCORE, "Paris", {"q": "capital of France?"}, judge=judge)
    assert graded.reward == 7.5 and not graded.failed
    model, messages, params, grammar = judge.calls[0]
    assert model == "local/judge" and "Q: capital of France? A: Paris" == messages[1]["content"]
    assert "from 0 to 10" in messages[0]["content"] and messages[0]["content"].startswith("Rate the answer.")
    assert (params.temperature, params.seed, params.max_new_tokens) == (0.5, 7, 20) and grammar
    wire = graded.to_wire()
    assert wire["metadata"]["token_usage"] == 14
    assert wire["model_grader_token_usage_per_model"]["local/judge"]["total_tokens"] == 14
    for reply in ('{"result": 11}', "not json"):
        bad = grade(SCORE, "Paris", {"q": "?"}, judge=FakeJudge(reply))
        assert bad.reward == 0.0 and bad.errors["model_grader_parse_error"] is True


def test_label_model_passes_on_passing_labels() -> None:
    grader = {"type": "multi", "name": "m", "calculate_output": "tone",
              "graders": {"tone": {"type": "label_model", "name": "tone", "model": "local/judge",
                                   "input": [{"role": "user", "content": "Tone of: {{sample.output_text}}"}],
                                   "labels": ["positive", "neutral", "negative"], "passing_labels": ["positive"]}}}
    assert grade(grader, "great!", judge=FakeJudge('{"label": "positive"}')).reward == 1.0
    graded = grade(grader, "meh", judge=FakeJudge('{"label": "neutral"}'))
    assert graded.reward == 0.0 and graded.scores["tone"] == 0.0


def test_a_failing_judge_is_a_recorded_error() -> None:
    def broken(*_args):
        raise RuntimeError("model unloaded")

    graded = grade(SCORE, "Paris", {"q": "?"}, judge=broken)
    assert graded.reward == 0.0 and graded.errors["model_grader_server_error"] is True
    assert "model unloaded" in graded.errors["model_grader_server_error_details"]


MULTI = {"type": "multi", "name": "combined",
         "graders": {"exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                               "reference": "{{item.answer}}", "operation": "eq"},
                     "close": {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                               "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}},
         "calculate_output": "0.5 * exact + 0.5 * close ^ 2 - min(exact, 0.25)"}


def test_multi_combines_named_sub_rewards() -> None:
    graded = grade(MULTI, "Paris", {"answer": "Paris"})
    assert graded.sub_rewards == {"exact": 1.0, "close": 1.0}
    assert graded.reward == pytest.approx(0.5 + 0.5 - 0.25)
    partial = grade(MULTI, "Pariss", {"answer": "Paris"})
    close = 1 - 1 / 11
    assert partial.reward == pytest.approx(0.5 * close**2)
    listed = dict(MULTI, graders=list(MULTI["graders"].values()))  # the API reference's list form
    assert grade(listed, "Paris", {"answer": "Paris"}).reward == pytest.approx(0.75)


def test_formula_is_arithmetic_only() -> None:
    names = {"a", "b"}
    tree = formula.parse("max(a, b) / 2 + sqrt(4) * -1 + 2 ** 2", names)
    assert formula.evaluate(tree, {"a": 1.0, "b": 3.0}) == pytest.approx(1.5 - 2 + 4)
    for bad in ("__import__('os').system('id')", "a.real", "open('x')", "a if b else 1", "[a]", "'a'", "c + 1",
                "a == b", "lambda: 1", "a; b"):
        with pytest.raises(formula.FormulaError):
            formula.parse(bad, names)
    with pytest.raises(formula.FormulaError, match="could not be evaluated"):
        formula.evaluate(formula.parse("a / b", names), {"a": 1.0, "b": 0.0})
    graded = grade(dict(MULTI, calculate_output="exact / (exact - 1)"), "Paris", {"answer": "Paris"})
    assert graded.reward == 0.0 and graded.errors["formula_parse_error"] is True


@pytest.mark.parametrize(("grader", "param", "text"), [
    ({"type": "nope", "name": "x"}, "grader.type", "must be one of"),
    ({"type": "label_model", "name": "x", "model": "m", "input": [], "labels": ["a"], "passing_labels": ["a"]},
     "grader.type", "inside a multi grader"),
    ({"type": "string_check", "input": "a", "reference": "b", "operation": "eq"}, "grader.name", "is required"),
    ({"type": "string_check", "name": "x", "input": "a", "reference": "b", "operation": "regex"},
     "grader.operation", "eq, ne, like, ilike"),
    ({"type": "string_check", "name": "x", "input": "{{foo}}", "reference": "b", "operation": "eq"},
     "grader.input", "outside the template namespaces"),
    ({"type": "string_check", "name": "x", "input": "a", "reference": "b", "operation": "eq", "extra": 1},
     "grader.extra", "is not a field"),
    ({"type": "python", "name": "x", "source": PY_EXACT, "image_tag": "2025-05-08"}, "grader.image_tag",
     "not supported"),
    (dict(SCORE, range=[1, 0]), "grader.range", "low < high"),
    (dict(SCORE, sampling_params={"reasoning_effort": "high"}), "grader.sampling_params.reasoning_effort",
     "do not reason"),
    (dict(SCORE, input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]),
     "grader.input.0.content.0.type", "text models"),
    (dict(MULTI, calculate_output="exact + missing"), "grader.calculate_output", "'missing'"),
    (dict(MULTI, graders={"exact": dict(MULTI["graders"]["exact"], operation="bad")}),
     "grader.graders.exact.operation", "eq, ne"),
    (dict(MULTI, graders={"not valid": MULTI["graders"]["exact"]}), "grader.graders.not valid", "identifiers"),
])
def test_invalid_graders_point_at_the_field(grader: dict, param: str, text: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        spec.validate(grader)
    assert refused.value.param == param and text in str(refused.value)


def test_judge_models_are_listed_with_their_fields() -> None:
    grader = dict(MULTI, graders={**MULTI["graders"], "judge": SCORE}, calculate_output="judge")
    assert spec.judge_models(spec.validate(grader), "method.reinforcement.grader") == [
        ("method.reinforcement.grader.graders.judge.model", "local/judge")]
