"""Wire models of chat completions (the subset of OpenAI's API openft serves)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from openft.schemas.common import RequestModel, WireModel, _invalid, int_in_range, number_above
from openft.serving.types import GenerationParams

MAX_NEW_TOKENS = 4096


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid("content parts must be text parts")
            parts.append(part["text"])
        return "".join(parts)


class StreamOptions(RequestModel):
    include_usage: bool = False


def _temperature(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise _invalid(f"must be a number between 0 and 2, got {value!r}")
    return float(value)


class ChatCompletionRequest(RequestModel):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int_in_range(1, MAX_NEW_TOKENS, nullable=True) = None  # type: ignore[valid-type]
    max_completion_tokens: int_in_range(1, MAX_NEW_TOKENS, nullable=True) = None  # type: ignore[valid-type]
    temperature: float | None = None
    top_p: number_above(0, 1, nullable=True) = None  # type: ignore[valid-type]
    n: int_in_range(1, 8, nullable=True) = None  # type: ignore[valid-type]
    stop: str | list[str] | None = None
    seed: int_in_range(-(2**63), 2**63 - 1, nullable=True) = None  # type: ignore[valid-type]
    stream: bool = False
    stream_options: StreamOptions | None = None

    _check_temperature = field_validator("temperature", mode="plain")(lambda cls, v: _temperature(v))

    @field_validator("stop", mode="plain")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise _invalid("must be a non-empty string or a list of at most 4 non-empty strings")
        return stops

    def to_generation_params(self) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or 256,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=list(self.stop or []),
            seed=self.seed,
            n=self.n or 1,
        )

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(WireModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(WireModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
