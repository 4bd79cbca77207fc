"""``python``: the grader's ``grade(sample, item)`` in a sandboxed process
(:mod:`openft.graders.sandbox`); its return value is the reward."""

from __future__ import annotations

from typing import Any

from openft.graders.sandbox import PythonSandbox, SandboxLimits


def sandbox(grader: dict[str, Any], limits: SandboxLimits) -> PythonSandbox:
    """A sandbox for this grader's source; one per grader, reused across samples."""
    return PythonSandbox(grader["source"], limits)


def score(box: PythonSandbox, context: dict[str, Any]) -> float:
    return box.grade(context["sample"], context["item"])
