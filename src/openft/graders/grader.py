"""A validated grader object, ready to grade many samples.

:class:`Grader` builds what each type needs once (a python sandbox, a judge
grammar, a parsed formula) and :meth:`Grader.grade` turns one sample and item
into a :class:`~openft.graders.result.GradeResult`. A grader never raises for
a bad sample: a missing template variable, a python grader that raises or
hangs, a judge that fails or answers out of range, a formula that divides by
zero all give reward 0 with the matching OpenAI error flag set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openft.graders import label_model, multi, python, score_model, spec, string_check, text_similarity
from openft.graders.formula import FormulaError
from openft.graders.judge import Judge, JudgeReply
from openft.graders.result import GradeResult, Usage
from openft.graders.sandbox import SandboxError, SandboxLimits
from openft.graders.templates import TemplateError


class GraderUnavailable(Exception):
    """The grader needs what this host cannot give (a python grader's sandbox)."""


@dataclass
class GradingContext:
    """What graders may use beyond the sample: sandbox limits, a judge for
    model graders, an embedding model for ``cosine``."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    judge: Judge | None = None
    embedding_model: Path | None = None


class Grader:
    def __init__(self, grader: dict[str, Any], context: GradingContext):
        self.spec, self.context = grader, context
        self.kind, self.name = grader["type"], grader["name"]
        self._sandbox = python.sandbox(grader, context.limits) if self.kind == "python" else None
        self._grammar: str | None = None
        if self.kind in ("score_model", "label_model"):
            from openft.serving.constraints import json_schema_grammar

            schema = score_model.SCHEMA if self.kind == "score_model" else label_model.schema(grader["labels"])
            self._grammar = json_schema_grammar(schema, param="grader")
        self._children: dict[str, Grader] = {}
        if self.kind == "multi":
            self._formula = multi.tree(grader)
            self._children = {name: Grader(sub, context) for name, sub in spec.sub_graders(grader).items()}

    def unavailable(self) -> str | None:
        """Why this grader cannot run on this host (a python grader, inside
        a multi grader too, needs the sandbox); None when it can."""
        if self._sandbox is not None:
            return self.context.limits.problem()
        return next((p for child in self._children.values() if (p := child.unavailable())), None)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        for child in self._children.values():
            child.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def grade(self, sample: dict[str, Any], item: dict[str, Any]) -> GradeResult:
        """Grade one sample (the ``sample`` namespace, see
        :func:`~openft.graders.templates.sample_namespace`) for one item."""
        started = time.perf_counter()
        result = GradeResult(self.name, self.kind)
        context = {"sample": sample, "item": item}
        try:
            self._grade(result, context)
        except TemplateError as exc:
            result.fail("invalid_variable_error", str(exc))
        result.execution_time = time.perf_counter() - started
        return result

    # ------------------------------------------------------------ internals
    def _grade(self, result: GradeResult, context: dict[str, Any]) -> None:
        grader = self.spec
        if self.kind == "string_check":
            result.reward = string_check.score(grader, context)
        elif self.kind == "text_similarity":
            result.reward = text_similarity.score(grader, context, self.context.embedding_model)
        elif self.kind == "python":
            assert self._sandbox is not None
            try:
                result.reward = python.score(self._sandbox, context)
            except SandboxError as exc:
                if exc.kind == "unavailable":
                    result.fail("python_grader_server_error", exc.detail)
                    result.errors["python_grader_server_error_type"] = "SandboxUnavailable"
                else:
                    result.fail("python_grader_runtime_error", exc.detail, "python_grader_runtime_error_details")
            except OSError as exc:  # the sandbox process could not start
                result.fail("python_grader_server_error", str(exc))
                result.errors["python_grader_server_error_type"] = type(exc).__name__
        elif self.kind in ("score_model", "label_model"):
            self._judge(result, context)
        else:
            self._multi(result, context)

    def _judge(self, result: GradeResult, context: dict[str, Any]) -> None:
        if self.context.judge is None:
            result.fail("model_grader_server_error", "no judge model is available here",
                        "model_grader_server_error_details")
            return
        assert self._grammar is not None
        model = self.spec["model"]
        result.sampled_model_name = model
        try:
            reply: JudgeReply
            if self.kind == "score_model":
                reward, reply = score_model.score(self.spec, context, self.context.judge, self._grammar)
            else:
                reward, label, reply = label_model.score(self.spec, context, self.context.judge, self._grammar)
                if label is not None:
                    result.scores["label"] = label
        except TemplateError:
            raise
        except Exception as exc:  # the judge failed (model gone, overloaded, timed out)
            result.fail("model_grader_server_error", str(exc), "model_grader_server_error_details")
            return
        result.usage_per_model[model] = Usage(reply.prompt_tokens, reply.completion_tokens)
        result.scores["judge_output"] = reply.text
        if reward is None:
            result.fail("model_grader_parse_error")
        else:
            result.reward = reward

    def _multi(self, result: GradeResult, context: dict[str, Any]) -> None:
        for name, child in self._children.items():
            sub = child.grade(context["sample"], context["item"])
            result.sub_rewards[name] = sub.reward
            result.scores[name] = sub.reward
            for flag, value in sub.errors.items():
                if value not in (False, None):
                    result.errors[flag] = value
            for model, usage in sub.usage_per_model.items():
                result.usage_per_model.setdefault(model, Usage()).add(usage)
            result.sampled_model_name = result.sampled_model_name or sub.sampled_model_name
        try:
            result.reward = multi.combine(self._formula, result.sub_rewards)
        except FormulaError as exc:
            result.fail("formula_parse_error", str(exc))
