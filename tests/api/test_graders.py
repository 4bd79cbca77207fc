"""The graders API on a real server through the official SDK and raw HTTP,
on both prefixes: validate and run, responses checked against the spec's
schemas, model graders judged by a model the server serves, errors pointing
into the grader."""

from __future__ import annotations

import openai
import pytest

from conftest import require
from support import Server, Tenant, assert_matches_schema

pytestmark = pytest.mark.api

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.label}}", "operation": "eq"}
PYTHON = {"type": "python", "name": "length",
          "source": "def grade(sample, item):\n    return len(sample['output_text']) / item['max']\n"}
TONE = {"type": "label_model", "name": "tone", "model": "local/tiny",
        "input": [{"role": "system", "content": "Classify the tone."},
                  {"role": "user", "content": [{"type": "input_text", "text": "Text: {{sample.output_text}}"}]}],
        "labels": ["happy", "sad"], "passing_labels": ["happy"]}


@pytest.fixture(scope="module")
def tenant(training_server: Server) -> Tenant:
    """Model graders need a model to judge with: the training server has ``local/tiny``."""
    return Tenant(training_server, "default", training_server.api_key)


@pytest.mark.parametrize("prefix", ["/v1", "/api/llm"])
def test_validate_echoes_the_grader(tenant: Tenant, prefix: str) -> None:
    with tenant.http(prefix) as http:
        response = http.post("/fine_tuning/alpha/graders/validate", json={"grader": EXACT})
    assert response.status_code == 200, response.text
    assert response.json() == {"grader": EXACT}
    assert_matches_schema(response.json(), "ValidateGraderResponse")


def test_run_through_the_sdk(tenant: Tenant) -> None:
    require("sandbox")  # python graders run only in it
    result = tenant.sdk.fine_tuning.alpha.graders.run(grader=EXACT, model_sample="cat", item={"label": "cat"})
    assert result.reward == 1.0 and result.metadata.type == "string_check"
    missed = tenant.sdk.fine_tuning.alpha.graders.run(grader=EXACT, model_sample="dog", item={"label": "cat"})
    assert missed.reward == 0.0 and not missed.metadata.errors.invalid_variable_error
    checked = tenant.sdk.fine_tuning.alpha.graders.validate(grader=PYTHON)
    assert checked.grader.source == PYTHON["source"]


@pytest.mark.parametrize("prefix", ["/v1", "/api/llm"])
def test_run_python_and_multi_with_a_served_judge(tenant: Tenant, prefix: str) -> None:
    require("sandbox")  # python graders run only in it
    multi = {"type": "multi", "name": "mix", "graders": {"length": PYTHON, "tone": TONE},
             "calculate_output": "0.5 * length + 0.5 * tone"}
    with tenant.http(prefix) as http:
        body = http.post("/fine_tuning/alpha/graders/run",
                         json={"grader": multi, "model_sample": "hello", "item": {"max": 10}}).json()
    assert_matches_schema(body, "RunGraderResponse")
    assert body["sub_rewards"]["length"] == 0.5 and body["sub_rewards"]["tone"] in (0.0, 1.0)
    assert body["reward"] == pytest.approx(0.25 + 0.5 * body["sub_rewards"]["tone"])
    metadata = body["metadata"]
    assert metadata["scores"]["tone"] == body["sub_rewards"]["tone"]
    assert not any(v is True for v in metadata["errors"].values()), metadata["errors"]
    usage = body["model_grader_token_usage_per_model"]["local/tiny"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert metadata["token_usage"] == usage["total_tokens"] and metadata["sampled_model_name"] == "local/tiny"


def test_a_grader_error_is_a_reward_of_zero_with_its_flag(tenant: Tenant) -> None:
    require("sandbox")  # python graders run only in it
    loop = {"type": "python", "name": "snoop", "source": "import os\ndef grade(sample, item):\n"
            "    return float(len(open('/etc/passwd').read()))\n"}
    body = tenant.http().post("/fine_tuning/alpha/graders/run",
                              json={"grader": loop, "model_sample": "x"}).json()
    assert_matches_schema(body, "RunGraderResponse")
    assert body["reward"] == 0.0 and body["metadata"]["errors"]["python_grader_runtime_error"] is True
    assert "/etc/passwd" in body["metadata"]["errors"]["python_grader_runtime_error_details"]


@pytest.mark.parametrize(("grader", "param"), [
    (dict(EXACT, operation="regex"), "grader.operation"),
    ({"type": "multi", "name": "m", "graders": {"a": dict(EXACT, input="{{bad.x}}")}, "calculate_output": "a"},
     "grader.graders.a.input"),
    (dict(TONE, model="ft:local/tiny:nobody::deadbeef", type="score_model", labels=None, passing_labels=None),
     "grader.labels"),
    ({"type": "multi", "name": "m", "graders": {"tone": dict(TONE, model="no/such-model")}, "calculate_output": "tone"},
     "grader.graders.tone.model"),
    ("not an object", "grader"),
])
def test_invalid_graders_are_400_pointing_into_them(tenant: Tenant, grader: object, param: str) -> None:
    for route in ("validate", "run"):
        response = tenant.http().post(f"/fine_tuning/alpha/graders/{route}",
                                      json={"grader": grader, "model_sample": "x"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    with pytest.raises(openai.BadRequestError):
        tenant.sdk.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
