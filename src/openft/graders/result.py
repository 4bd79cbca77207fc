"""What grading one sample gives: the reward and OpenAI's metadata (error
flags, time, sub-scores, token usage), shaped as ``RunGraderResponse``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ERROR_FLAGS: dict[str, Any] = {
    "formula_parse_error": False,
    "sample_parse_error": False,
    "truncated_observation_error": False,
    "unresponsive_reward_error": False,
    "invalid_variable_error": False,
    "other_error": False,
    "python_grader_server_error": False,
    "python_grader_server_error_type": None,
    "python_grader_runtime_error": False,
    "python_grader_runtime_error_details": None,
    "model_grader_server_error": False,
    "model_grader_refusal_error": False,
    "model_grader_parse_error": False,
    "model_grader_server_error_details": None,
}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens, "cached_tokens": 0}


@dataclass
class GradeResult:
    name: str
    type: str
    reward: float = 0.0
    errors: dict[str, Any] = field(default_factory=lambda: dict(ERROR_FLAGS))
    execution_time: float = 0.0
    scores: dict[str, Any] = field(default_factory=dict)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    usage_per_model: dict[str, Usage] = field(default_factory=dict)
    sampled_model_name: str | None = None

    def fail(self, flag: str, detail: str | None = None, detail_flag: str | None = None) -> GradeResult:
        """Mark an error: the reward is 0 and the flag (plus its detail field) says why."""
        self.reward = 0.0
        self.errors[flag] = True
        if detail_flag is not None:
            self.errors[detail_flag] = detail
        if detail is not None:
            self.scores.setdefault("error", detail)
        return self

    @property
    def failed(self) -> bool:
        return any(value is True for value in self.errors.values())

    @property
    def usage(self) -> Usage:
        total = Usage()
        for usage in self.usage_per_model.values():
            total.add(usage)
        return total

    def to_wire(self) -> dict[str, Any]:
        usage = self.usage
        return {
            "reward": self.reward,
            "metadata": {
                "name": self.name,
                "type": self.type,
                "errors": self.errors,
                "execution_time": self.execution_time,
                "scores": self.scores,
                "token_usage": (usage.prompt_tokens + usage.completion_tokens) if self.usage_per_model else None,
                "sampled_model_name": self.sampled_model_name,
            },
            "sub_rewards": self.sub_rewards,
            "model_grader_token_usage_per_model": {m: u.to_dict() for m, u in self.usage_per_model.items()},
        }
