"""Wire models of the graders API (``/fine_tuning/alpha/graders/...``). The
grader object itself is checked by :mod:`openft.graders.spec`, which points
errors into it."""

from __future__ import annotations

from typing import Any

from openft.schemas.common import RequestModel


class ValidateGraderRequest(RequestModel):
    grader: Any


class RunGraderRequest(RequestModel):
    grader: Any
    model_sample: str
    item: dict[str, Any] | None = None
