"""Model graders' access to a model: a :data:`Judge` generates one answer
for rendered messages under a grammar. :class:`GeneratorJudge` is the one
openft uses (its own serving generator, with the judge models resolved for
the organisation beforehand); tests may pass any function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openft.graders.templates import render_messages
from openft.serving.types import GenerationParams, ModelRef, StopSignal

DEFAULT_MAX_TOKENS = 256


@dataclass
class JudgeReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


Judge = Callable[[str, list[dict[str, str]], GenerationParams, str], JudgeReply]
"""(model, messages, sampling parameters, llguidance grammar) -> reply."""


class GeneratorJudge:
    def __init__(self, generator: Any, refs: dict[str, ModelRef], timeout_seconds: float):
        self.generator, self.refs, self.timeout_seconds = generator, refs, timeout_seconds

    def __call__(self, model: str, messages: list[dict[str, str]], params: GenerationParams,
                 grammar: str) -> JudgeReply:
        ref = self.refs[model]
        prompt = self.generator.prompt_ids(ref, messages)
        [answer] = self.generator.generate(ref, prompt, params, StopSignal(self.timeout_seconds), grammar=grammar)
        return JudgeReply(answer.text, len(prompt), answer.completion_tokens)


def messages(grader: dict[str, Any], context: dict[str, Any]) -> list[dict[str, str]]:
    """The grader's ``input`` rendered into chat messages (:func:`render_messages`)."""
    return render_messages(grader["input"], context)


def params(grader: dict[str, Any]) -> GenerationParams:
    """Sampling parameters of a judge call: the grader's, else greedy (a judge
    should give the same verdict twice) with up to 256 new tokens."""
    given = {k: v for k, v in (grader.get("sampling_params") or {}).items() if v is not None}
    return GenerationParams(
        max_new_tokens=int(given.get("max_completions_tokens", DEFAULT_MAX_TOKENS)),
        temperature=float(given.get("temperature", 0.0)),
        top_p=float(given.get("top_p", 1.0)),
        seed=given.get("seed"),
    )


def with_instruction(instruction: str, rendered: list[dict[str, str]]) -> list[dict[str, str]]:
    """The format instruction as (or appended to) the leading system message."""
    if rendered and rendered[0]["role"] == "system":
        return [{"role": "system", "content": rendered[0]["content"] + "\n\n" + instruction}, *rendered[1:]]
    return [{"role": "system", "content": instruction}, *rendered]
