"""An eval's ``data_source_config`` and ``testing_criteria``, checked field
by field (a 400 whose ``param`` points into them), and the pass rule.

Testing criteria are graders (``openft.graders.spec``, the same checks RFT
graders get) of the types OpenAI allows in evals, each with an ``id``
(``{name}-{uuid}``, as OpenAI forms it; results are keyed by it) and, for
``text_similarity`` (required), ``python`` and ``score_model`` (optional), a
``pass_threshold``. A criterion passes when:

* ``string_check``: the check holds (score 1);
* ``label_model``: the judge chose one of ``passing_labels``;
* ``text_similarity``: score >= ``pass_threshold``;
* ``python`` / ``score_model``: score >= ``pass_threshold``; without one,
  score >= the middle of the score's range (0.5 for python, (low + high) / 2
  for a score model's ``range``).

A grader that could not grade (its flag set in ``GradeResult.errors``)
neither passes nor fails: the item is ``error``.
"""

from __future__ import annotations

import uuid
from typing import Any

from openft.errors import InvalidRequest
from openft.graders import spec, templates

CRITERION_TYPES = ("label_model", "string_check", "text_similarity", "python", "score_model")
THRESHOLD = {"text_similarity": "required", "python": "optional", "score_model": "optional"}
MAX_CRITERIA = 32
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "output_text": {"type": "string"},
        "output_json": {},
        "output_tools": {"type": "array"},
    },
    "required": ["output_text"],
}
"""The ``sample`` namespace graders see (``openft.graders.templates.sample_namespace``)."""


def check_config(config: Any, param: str = "data_source_config") -> dict[str, Any]:
    """The data source config as served: ``{"type": "custom", "schema": ...}``,
    the schema of what criteria may refer to (``item``, and ``sample`` when asked)."""
    if not isinstance(config, dict):
        raise spec.invalid(param, "must be an object with a 'type'", code="invalid_value")
    kind = config.get("type")
    if kind in ("logs", "stored_completions"):
        raise InvalidRequest(
            f"Invalid '{param}.type': {kind!r} data sources read completions stored by OpenAI's platform; "
            "openft stores none. Use 'custom' with an item_schema, and run the eval on a jsonl file or on "
            "completions sampled from a model.", param=f"{param}.type", code="unsupported_data_source")
    if kind != "custom":
        raise spec.invalid(f"{param}.type", f"must be 'custom', got {kind!r}", code="invalid_value")
    if unknown := sorted(set(config) - {"type", "item_schema", "include_sample_schema"}):
        raise spec.invalid(f"{param}.{unknown[0]}", "is not a field of a custom data source config",
                           code="invalid_value")
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise spec.invalid(f"{param}.item_schema", "is required: a JSON Schema object for each item",
                           code="invalid_value")
    _check_json_schema(schema, f"{param}.item_schema")
    include = config.get("include_sample_schema", False)
    if not isinstance(include, bool):
        raise spec.invalid(f"{param}.include_sample_schema", "must be a boolean", code="invalid_value")
    properties: dict[str, Any] = {"item": schema}
    if include:
        properties["sample"] = SAMPLE_SCHEMA
    return {"type": "custom", "schema": {"type": "object", "properties": properties,
                                         "required": list(properties)}}


def _check_json_schema(schema: dict[str, Any], param: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise spec.invalid(param + (f".{where}" if where else ""), f"is not a valid JSON Schema: {exc.message}",
                           code="invalid_value") from None


def split_threshold(criteria: Any, param: str = "testing_criteria") -> list[tuple[dict[str, Any], float | None]]:
    """Each criterion without its eval-only fields (``pass_threshold``, an
    echoed ``id``), ready for the grader checks, with its threshold."""
    if not isinstance(criteria, list) or not criteria:
        raise spec.invalid(param, "must be a non-empty list of graders", code="invalid_value")
    if len(criteria) > MAX_CRITERIA:
        raise spec.invalid(param, f"must hold at most {MAX_CRITERIA} graders", code="invalid_value")
    found, names = [], set()
    for index, criterion in enumerate(criteria):
        where = f"{param}.{index}"
        if not isinstance(criterion, dict):
            raise spec.invalid(where, "must be a grader object with a 'type'")
        grader = {k: v for k, v in criterion.items() if k not in ("pass_threshold", "id")}
        kind = grader.get("type")
        threshold = criterion.get("pass_threshold")
        rule = THRESHOLD.get(kind) if isinstance(kind, str) else None
        if "pass_threshold" in criterion and rule is None and kind in CRITERION_TYPES:
            raise spec.invalid(f"{where}.pass_threshold", f"is not a field of a {kind} criterion")
        if rule == "required" and threshold is None:
            raise spec.invalid(f"{where}.pass_threshold", "is required for a text_similarity criterion")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise spec.invalid(f"{where}.pass_threshold", "must be a number")
        if isinstance(grader.get("name"), str):
            if grader["name"] in names:
                raise spec.invalid(f"{where}.name", f"{grader['name']!r} names two criteria")
            names.add(grader["name"])
        found.append((grader, float(threshold) if threshold is not None else None))
    return found


def with_id(grader: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """The criterion as stored and served."""
    stored = {**grader, "id": f"{grader['name']}-{uuid.uuid4()}"}
    if threshold is not None:
        stored["pass_threshold"] = threshold
    return stored


def grader_of(criterion: dict[str, Any]) -> dict[str, Any]:
    """The grader object of a stored criterion."""
    return {k: v for k, v in criterion.items() if k not in ("pass_threshold", "id")}


def passed(criterion: dict[str, Any], score: float) -> bool:
    kind = criterion["type"]
    if kind in ("string_check", "label_model"):
        return score >= 1.0
    threshold = criterion.get("pass_threshold")
    if threshold is None:
        low, high = criterion.get("range", [0, 1]) if kind == "score_model" else (0, 1)
        threshold = (low + high) / 2
    return score >= float(threshold)


def uses_sample(criteria: list[dict[str, Any]]) -> bool:
    """Whether any criterion reads the ``sample`` namespace: a template
    variable ``{{sample.…}}`` (``input``, ``reference``, a judge's messages),
    or a python grader (its code may)."""
    return any(c["type"] == "python" or any(v.split(".")[0] == "sample" for t in _templates(c)
                                            for v in templates.variables(t)) for c in criteria)


def _templates(criterion: dict[str, Any]) -> list[str]:
    texts = [criterion[k] for k in ("input", "reference") if isinstance(criterion.get(k), str)]
    for message in criterion.get("input") if isinstance(criterion.get("input"), list) else []:
        content = message["content"]
        for part in content if isinstance(content, list) else [content]:
            texts.append(part if isinstance(part, str) else part["text"])
    return texts
