"""Wire models of chat completions (the subset of OpenAI's API openft serves)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from openft.schemas.common import RequestModel, WireModel, _invalid, int_in_range, number_above
from openft.serving.types import GenerationParams

MAX_NEW_TOKENS = 4096


class FunctionCall(RequestModel):
    name: Annotated[str, Field(min_length=1)]
    arguments: str


class ToolCall(RequestModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # an earlier assistant turn's reasoning (as DeepSeek and vLLM send it)

    @model_validator(mode="after")
    def _reasoning_on_assistant_turns(self) -> ChatMessage:
        if self.reasoning_content is not None and self.role != "assistant":
            raise PydanticCustomError("invalid", "reasoning_content belongs to assistant messages",
                                      {"param": "messages.reasoning_content"})
        return self

    def text(self) -> str:
        if self.content is None:
            if self.role == "assistant" and self.tool_calls:
                return ""
            raise _invalid("content is required")
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid("content parts must be text parts")
            parts.append(part["text"])
        return "".join(parts)


class FunctionDefinition(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


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
    logprobs: bool | None = None
    top_logprobs: int_in_range(0, 20, nullable=True) = None  # type: ignore[valid-type]
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Reasoning models: "none" turns thinking off where the model's template
    # can (Qwen3's enable_thinking); the effort levels are not implemented by
    # any template openft reads, so they are refused rather than ignored.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        """Fields of OpenAI's API that openft does not implement are refused
        when set to anything but their no-op value, never ignored."""
        if isinstance(data, dict):
            for name, neutral in UNSUPPORTED_FIELDS.items():
                if name in data and data[name] not in neutral:
                    raise PydanticCustomError(
                        "unsupported", f"'{name}' is not supported by openft's chat completions",
                        {"param": name})
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError("invalid", "top_logprobs needs logprobs: true", {"param": "top_logprobs"})
        if self.response_format and self.response_format.type == "json_schema" and (
            self.response_format.json_schema is None or self.response_format.json_schema.schema_ is None
        ):
            raise PydanticCustomError("invalid", "json_schema.schema is required for type json_schema",
                                      {"param": "response_format.json_schema"})
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise PydanticCustomError("invalid", "tool_choice needs tools", {"param": "tool_choice"})
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools and self.tool_choice.function.name not in {
            t.function.name for t in self.tools
        }:
            raise PydanticCustomError("invalid", f"tool_choice names no tool: {self.tool_choice.function.name!r}",
                                      {"param": "tool_choice.function.name"})
        if self.response_format and self.response_format.type != "text" and self.tools and (
            self.tool_choice not in (None, "none")
        ):
            raise PydanticCustomError("invalid", "response_format cannot be combined with tools here",
                                      {"param": "response_format"})
        return self

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

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as dicts for the chat template (tool calls kept for
        :mod:`openft.tool_format`)."""
        out: list[dict[str, Any]] = []
        for m in self.messages:
            message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.reasoning_content and m.role == "assistant":
                message["reasoning_content"] = m.reasoning_content
            if m.tool_call_id and m.role == "tool":
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def tool_dicts(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in self.tools or []]


UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "functions": (None, []),
    "function_call": (None,),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
}


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprobOut(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(WireModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class FunctionCallOut(WireModel):
    name: str
    arguments: str


class ToolCallOut(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None  # extension: a reasoning model's thinking, apart from its answer


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(WireModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class FunctionCallDelta(WireModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(WireModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    reasoning_content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_tool_calls(self, handler: Any) -> Any:
        data = handler(self)
        for key in ("tool_calls", "reasoning_content"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ChunkChoice(WireModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
