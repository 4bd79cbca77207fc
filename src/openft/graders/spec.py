"""Checking a grader object against OpenAI's schemas, field by field, so that
every mistake is a 400 whose ``param`` points into it
(``method.reinforcement.grader.graders.exact.operation``).

:func:`validate` returns the grader as it will be stored and echoed back
(OpenAI's ``ValidateGraderResponse``): the same object with defaults filled
in (``range`` of a score model). Models named by model graders are checked
against the organisation by the caller (:func:`judge_models` lists them).
"""

from __future__ import annotations

from typing import Any

from openft.errors import InvalidRequest
from openft.graders import formula, templates
from openft.graders.sandbox import MAX_SOURCE_BYTES

STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3",
                      "rouge_4", "rouge_5", "rouge_l")
TOP_LEVEL_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
SUB_GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")
EVAL_ROLES = ("user", "assistant", "system", "developer")
MAX_JUDGE_TOKENS = 4096


def invalid(param: str, message: str, code: str = "invalid_grader") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}.", param=param, code=code)


def validate(grader: Any, param: str = "grader", *, cosine_available: bool = False,
             allowed: tuple[str, ...] = TOP_LEVEL_TYPES) -> dict[str, Any]:
    if not isinstance(grader, dict):
        raise invalid(param, "must be a grader object with a 'type'")
    kind = grader.get("type")
    if kind not in allowed:
        extra = " (label_model graders go inside a multi grader)" if kind == "label_model" else ""
        raise invalid(f"{param}.type", f"must be one of {', '.join(allowed)}, got {kind!r}{extra}")
    fields = _FIELDS[kind]
    unknown = sorted(set(grader) - fields["required"] - fields["optional"])
    if unknown:
        raise invalid(f"{param}.{unknown[0]}", "is not a field of a " + kind + " grader")
    for name in sorted(fields["required"]):
        if name not in grader:
            raise invalid(f"{param}.{name}", "is required")
    _string(grader, "name", param)
    checked = dict(grader)
    _CHECKS[kind](checked, param, cosine_available)
    return checked


def judge_models(grader: dict[str, Any], param: str = "grader") -> list[tuple[str, str]]:
    """(param of the model field, model) of every model grader, inside multi too."""
    if grader["type"] in ("score_model", "label_model"):
        return [(f"{param}.model", grader["model"])]
    if grader["type"] == "multi":
        keyed = isinstance(grader["graders"], dict) and "type" not in grader["graders"]
        found = []
        for index, (name, sub) in enumerate(sub_graders(grader).items()):
            where = f"{param}.graders." + (name if keyed else str(index))
            found += judge_models(sub, where)
        return found
    return []


def sub_graders(grader: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A multi grader's graders by the name its formula uses: the keys of an
    object (OpenAI's documented form), or each grader's ``name`` for a list or
    a single grader (the form in the API reference)."""
    graders = grader["graders"]
    if isinstance(graders, dict) and "type" not in graders:
        return dict(graders)
    items = graders if isinstance(graders, list) else [graders]
    return {g["name"]: g for g in items}


# ----------------------------------------------------------------- per type
def _string(grader: dict[str, Any], key: str, param: str, *, template: bool = False) -> str:
    value = grader.get(key)
    if not isinstance(value, str):
        raise invalid(f"{param}.{key}", "must be a string")
    if template and (problem := templates.check(value)):
        raise invalid(f"{param}.{key}", problem)
    return value


def _check_string_check(grader: dict[str, Any], param: str, _cosine: bool) -> None:
    _string(grader, "input", param, template=True)
    _string(grader, "reference", param, template=True)
    if grader["operation"] not in STRING_OPERATIONS:
        raise invalid(f"{param}.operation", f"must be one of {', '.join(STRING_OPERATIONS)}")


def _check_text_similarity(grader: dict[str, Any], param: str, cosine_available: bool) -> None:
    _string(grader, "input", param, template=True)
    _string(grader, "reference", param, template=True)
    metric = grader["evaluation_metric"]
    if metric not in SIMILARITY_METRICS:
        raise invalid(f"{param}.evaluation_metric", f"must be one of {', '.join(SIMILARITY_METRICS)}")
    if metric == "cosine" and not cosine_available:
        raise invalid(f"{param}.evaluation_metric",
                      "'cosine' needs an embedding model, and this server has none configured "
                      "(OPENFT_GRADER_EMBEDDING_MODEL); use another metric or ask the operator",
                      code="unsupported_metric")


def _check_python(grader: dict[str, Any], param: str, _cosine: bool) -> None:
    """Cheap checks only: the source is parsed in a sandbox by the caller
    (:func:`python_sources`), never in the server's process."""
    source = _string(grader, "source", param)
    try:
        size = len(source.encode())
    except UnicodeEncodeError:
        raise invalid(f"{param}.source", "is not valid Unicode text (it holds a lone surrogate)") from None
    if size > MAX_SOURCE_BYTES:
        raise invalid(f"{param}.source", f"is larger than {MAX_SOURCE_BYTES // 1024} KiB")
    if "image_tag" in grader:
        raise invalid(f"{param}.image_tag",
                      "is not supported: openft runs python graders with the server's own Python "
                      "(standard library and installed packages such as numpy); remove image_tag",
                      code="unsupported_image_tag")


def python_sources(grader: dict[str, Any], param: str = "grader") -> list[tuple[str, str]]:
    """(param of the grader, source) of every python grader, inside multi too."""
    if grader["type"] == "python":
        return [(param, grader["source"])]
    if grader["type"] == "multi":
        keyed = isinstance(grader["graders"], dict) and "type" not in grader["graders"]
        return [found for index, (name, sub) in enumerate(sub_graders(grader).items())
                for found in python_sources(sub, f"{param}.graders." + (name if keyed else str(index)))]
    return []


def _check_eval_input(grader: dict[str, Any], param: str) -> None:
    check_messages(grader["input"], f"{param}.input")


def check_messages(messages: Any, param: str, namespaces: tuple[str, ...] = templates.NAMESPACES) -> None:
    """A list of OpenAI eval messages (``{"role", "content", "type"?}``, the
    content a string, an ``input_text``/``output_text`` part or a list of
    them) whose templates name only ``namespaces``."""
    if not isinstance(messages, list) or not messages:
        raise invalid(param, "must be a non-empty list of messages")
    for index, message in enumerate(messages):
        where = f"{param}.{index}"
        if not isinstance(message, dict):
            raise invalid(where, "must be a message object with 'role' and 'content'")
        unknown = sorted(set(message) - {"role", "content", "type"})
        if unknown:
            raise invalid(f"{where}.{unknown[0]}", "is not a field of a message")
        if message.get("type", "message") != "message":
            raise invalid(f"{where}.type", "must be 'message'")
        if message.get("role") not in EVAL_ROLES:
            raise invalid(f"{where}.role", f"must be one of {', '.join(EVAL_ROLES)}")
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        for number, part in enumerate(parts):
            at = f"{where}.content" + (f".{number}" if isinstance(content, list) else "")
            text = part if isinstance(part, str) else None
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
                text = part.get("text")
            elif isinstance(part, dict) and part.get("type") in ("input_image", "input_audio"):
                raise invalid(f"{at}.type", f"{part['type']} content is not supported: openft's "
                              "judges are text models", code="unsupported_content")
            if not isinstance(text, str):
                raise invalid(at, "must be text: a string, or {'type': 'input_text', 'text': ...}")
            if problem := templates.check(text, namespaces):
                raise invalid(at, problem)


def _check_judge(grader: dict[str, Any], param: str) -> None:
    _string(grader, "model", param)
    _check_eval_input(grader, param)


def _check_score_model(grader: dict[str, Any], param: str, _cosine: bool) -> None:
    _check_judge(grader, param)
    bounds = grader.setdefault("range", [0, 1])
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not bounds[0] < bounds[1]):
        raise invalid(f"{param}.range", "must be two numbers [low, high] with low < high")
    params = grader.get("sampling_params") or {}
    if not isinstance(params, dict):
        raise invalid(f"{param}.sampling_params", "must be an object")
    for key, value in params.items():
        at = f"{param}.sampling_params.{key}"
        if value is None:
            continue
        if key == "seed" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise invalid(at, "must be an integer")
        elif key in ("temperature", "top_p") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise invalid(at, "must be a number")
        elif key == "temperature" and not 0 <= value <= 2:
            raise invalid(at, "must be between 0 and 2")
        elif key == "top_p" and not 0 < value <= 1:
            raise invalid(at, "must be greater than 0 and at most 1")
        elif key == "max_completions_tokens" and not (
                isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_JUDGE_TOKENS):
            raise invalid(at, f"must be an integer between 1 and {MAX_JUDGE_TOKENS}")
        elif key == "reasoning_effort":
            raise invalid(at, "is not supported: openft's judge models do not reason; remove it",
                          code="unsupported_parameter")
        elif key not in ("seed", "temperature", "top_p", "max_completions_tokens"):
            raise invalid(at, "is not a sampling parameter of a score_model grader")


def _check_label_model(grader: dict[str, Any], param: str, _cosine: bool) -> None:
    _check_judge(grader, param)
    labels = grader["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise invalid(f"{param}.labels", "must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise invalid(f"{param}.labels", "must not repeat a label")
    passing = grader["passing_labels"]
    if not isinstance(passing, list) or not passing or not all(isinstance(x, str) for x in passing):
        raise invalid(f"{param}.passing_labels", "must be a non-empty list of labels")
    if missing := [x for x in passing if x not in labels]:
        raise invalid(f"{param}.passing_labels", f"{missing[0]!r} is not one of the labels")


def _check_multi(grader: dict[str, Any], param: str, cosine_available: bool) -> None:
    graders = grader["graders"]
    keyed = isinstance(graders, dict) and "type" not in graders
    if keyed:
        items = [(name, f"{param}.graders.{name}", sub) for name, sub in graders.items()]
    elif isinstance(graders, (list, dict)):
        listed = graders if isinstance(graders, list) else [graders]
        items = [(sub.get("name") if isinstance(sub, dict) else None,
                  f"{param}.graders" + (f".{i}" if isinstance(graders, list) else ""), sub)
                 for i, sub in enumerate(listed)]
    else:
        raise invalid(f"{param}.graders", "must be an object of named graders")
    if not items:
        raise invalid(f"{param}.graders", "must hold at least one grader")
    checked: dict[str, Any] = {}
    for name, where, sub in items:
        sub = validate(sub, where, cosine_available=cosine_available, allowed=SUB_GRADER_TYPES)
        if not isinstance(name, str) or not name.isidentifier():
            raise invalid(where if keyed else f"{where}.name",
                          f"{name!r} cannot be used in calculate_output: name graders with identifiers "
                          "such as 'exact' or 'similarity'")
        if name in checked:
            raise invalid(f"{where}.name", f"{name!r} names two graders")
        checked[name] = sub
    grader["graders"] = checked if keyed else (list(checked.values()) if isinstance(graders, list)
                                               else next(iter(checked.values())))
    if not isinstance(grader["calculate_output"], str):
        raise invalid(f"{param}.calculate_output", "must be a string")
    try:
        formula.parse(grader["calculate_output"], set(checked))
    except formula.FormulaError as exc:
        raise invalid(f"{param}.calculate_output", str(exc)) from None


def _fields(required: set[str], optional: set[str] = frozenset()) -> dict[str, set[str]]:  # type: ignore[assignment]
    return {"required": {"type", "name", *required}, "optional": set(optional)}


_FIELDS = {
    "string_check": _fields({"input", "reference", "operation"}),
    "text_similarity": _fields({"input", "reference", "evaluation_metric"}),
    "python": _fields({"source"}, {"image_tag"}),
    "score_model": _fields({"model", "input"}, {"range", "sampling_params"}),
    "label_model": _fields({"model", "input", "labels", "passing_labels"}),
    "multi": _fields({"graders", "calculate_output"}),
}
_CHECKS = {
    "string_check": _check_string_check,
    "text_similarity": _check_text_similarity,
    "python": _check_python,
    "score_model": _check_score_model,
    "label_model": _check_label_model,
    "multi": _check_multi,
}
