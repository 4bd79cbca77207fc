"""``score_model``: a judge model reads the rendered ``input`` and answers
``{"result": <number>}`` (held to that shape by a grammar while it decodes);
the reward is the number, which must lie in ``range`` (default [0, 1]), else
``model_grader_parse_error``."""

from __future__ import annotations

import json
from typing import Any

from openft.graders import judge as judging

SCHEMA = {"type": "object", "properties": {"result": {"type": "number"}}, "required": ["result"],
          "additionalProperties": False}


def instruction(low: float, high: float) -> str:
    return (f'Answer only with a JSON object {{"result": <score>}} where <score> is a number '
            f"from {low:g} to {high:g}.")


def score(grader: dict[str, Any], context: dict[str, Any], judge: judging.Judge,
          grammar: str) -> tuple[float | None, judging.JudgeReply]:
    """(reward, or None when the reply does not parse or is out of range; the reply)."""
    low, high = grader.get("range", [0, 1])
    messages = judging.with_instruction(instruction(low, high), judging.messages(grader, context))
    reply = judge(grader["model"], messages, judging.params(grader), grammar)
    try:
        value = json.loads(reply.text)["result"]
    except (ValueError, KeyError, TypeError):
        return None, reply
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return None, reply
    return float(value), reply
