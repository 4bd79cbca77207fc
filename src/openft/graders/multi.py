"""``multi``: every sub-grader scores the sample; ``calculate_output``
combines their rewards, by name, into one (:mod:`openft.graders.formula`)."""

from __future__ import annotations

import ast
from typing import Any

from openft.graders import formula, spec


def tree(grader: dict[str, Any]) -> ast.expr:
    return formula.parse(grader["calculate_output"], set(spec.sub_graders(grader)))


def combine(parsed: ast.expr, rewards: dict[str, float]) -> float:
    return formula.evaluate(parsed, rewards)
