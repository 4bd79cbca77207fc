"""``label_model`` (inside a multi grader): a judge model picks one of
``labels`` (a grammar holds it to ``{"label": <one of them>}``); the reward is
1.0 when the label is one of ``passing_labels``, else 0.0."""

from __future__ import annotations

import json
from typing import Any

from openft.graders import judge as judging


def schema(labels: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {"label": {"enum": labels}}, "required": ["label"],
            "additionalProperties": False}


def score(grader: dict[str, Any], context: dict[str, Any], judge: judging.Judge,
          grammar: str) -> tuple[float | None, str | None, judging.JudgeReply]:
    """(reward or None if unparseable, the label, the reply)."""
    instruction = ("Answer only with a JSON object {\"label\": <label>} where <label> is one of: "
                   + ", ".join(json.dumps(label) for label in grader["labels"]) + ".")
    messages = judging.with_instruction(instruction, judging.messages(grader, context))
    reply = judge(grader["model"], messages, judging.params(grader), grammar)
    try:
        label = json.loads(reply.text)["label"]
    except (ValueError, KeyError, TypeError):
        return None, None, reply
    if label not in grader["labels"]:
        return None, None, reply
    return float(label in grader["passing_labels"]), label, reply
