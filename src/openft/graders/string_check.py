"""``string_check``: 1.0 when the rendered input and reference compare as the
operation says, else 0.0. ``eq`` / ``ne``: exact (in)equality; ``like``: the
input contains the reference; ``ilike``: the same, ignoring case."""

from __future__ import annotations

from typing import Any

from openft.graders.templates import render


def score(grader: dict[str, Any], context: dict[str, Any]) -> float:
    text, reference = render(grader["input"], context), render(grader["reference"], context)
    operation = grader["operation"]
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    return float(reference.casefold() in text.casefold())
