"""The chat stream's wire format from engine events: a stream that fails
half-way still ends with ``data: [DONE]``; a stream that ends (however it
ends) trips its generation's stop signal; text that turns out to be a tool
call goes out as ``tool_calls`` deltas, other text as content."""

from __future__ import annotations

import asyncio
import json

import pytest

from openft.config import load_settings
from openft.services.chat import ChatService
from openft.serving.chat_plan import Plan
from openft.serving.types import Failed, Finished, StopSignal, TokenEvent


class Script:
    """Stands in for a submission: hands out scripted engine events."""

    def __init__(self, events, endless: bool = False):
        self.events, self.endless = list(events), endless

    async def get(self):
        if self.events:
            return self.events.pop(0)
        assert self.endless
        return TokenEvent(0, "tok ", None)


def service(tmp_path) -> ChatService:
    return ChatService(load_settings(home=tmp_path), registry=None)  # type: ignore[arg-type]


def run(chat: ChatService, script: Script, plan: Plan, stop: StopSignal) -> list[dict]:
    async def collect() -> list[str]:
        return [e async for e in chat.events(script, plan, "m", False, stop)]  # type: ignore[arg-type]

    events = asyncio.run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e[6:]) for e in events[:-1]]


PLAIN = Plan(prompt=[1, 2], grammar=None, logprobs=None, tool_names=set(), context=512)


def test_error_mid_stream_is_an_event_then_done(tmp_path) -> None:
    stop = StopSignal(60)
    payloads = run(service(tmp_path), Script([TokenEvent(0, "Hel", None), Failed(RuntimeError("the GPU caught fire"))]),
                   PLAIN, stop)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[1]["choices"][0]["delta"]["content"] == "Hel"
    assert payloads[2]["error"]["type"] == "server_error"
    assert "fire" not in json.dumps(payloads[2])  # no internals leak to the client
    assert stop.cancelled


def test_a_reader_that_leaves_stops_the_generation(tmp_path) -> None:
    chat, stop = service(tmp_path), StopSignal(60)

    async def read_two_then_leave() -> None:
        events = chat.events(Script([], endless=True), PLAIN, "m", False, stop)  # type: ignore[arg-type]
        await events.__anext__()
        await events.__anext__()
        await events.aclose()

    asyncio.run(read_two_then_leave())
    assert stop.cancelled


TOOLS = Plan(prompt=[1], grammar=None, logprobs=None, tool_names={"get_weather"}, context=512)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_a_tool_call_streams_as_tool_call_deltas(tmp_path) -> None:
    pieces = [CALL[i:i + 7] for i in range(0, len(CALL), 7)]
    events = [TokenEvent(0, p, None) for p in pieces] + [Finished(0, "stop", len(pieces) + 1, CALL)]
    payloads = run(service(tmp_path), Script(events), TOOLS, StopSignal(60))
    deltas = [p["choices"][0]["delta"] for p in payloads[1:]]
    assert not any(d.get("content") for d in deltas)  # nothing of the call leaked as text
    [call] = deltas[0]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_text_with_tools_available_streams_as_content(tmp_path) -> None:
    events = [TokenEvent(0, "<to", None), TokenEvent(0, "day it rains", None), Finished(0, "stop", 3, "x")]
    payloads = run(service(tmp_path), Script(events), TOOLS, StopSignal(60))
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads)
    assert text == "<today it rains"
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


class RecordingGenerator:
    """Stands in for the generator when a request is planned: records the tools the prompt shows."""

    def __init__(self):
        self.shown = "not asked"

    def prompt_ids(self, ref, messages, tools=None):
        self.shown = tools
        return [1, 2, 3]

    def context_length(self, ref) -> int:
        return 512

    def chat_template(self, ref) -> str:
        return "<|im_start|>{{ m }}"  # ChatML: Hermes tool calls, no reasoning

    def special_tokens(self, ref) -> dict[str, int]:
        return {}

    def convention(self, ref):
        from openft import tool_format

        return tool_format.CONVENTIONS["hermes"]


def test_tool_choice_decides_what_the_model_sees_and_may_emit(tmp_path) -> None:
    from openft.schemas.chat import ChatCompletionRequest

    chat = service(tmp_path)
    chat._generator = generator = RecordingGenerator()
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}

    def plan(**extra) -> Plan:
        body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=[tool], **extra)
        return chat.plan(None, body)  # type: ignore[arg-type]

    none = plan(tool_choice="none")
    assert generator.shown is None and none.grammar is None and none.tool_names == set()
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_time"}}):
        forced = plan(tool_choice=choice)
        assert generator.shown == [tool] and forced.tool_names == {"get_time"}
        assert "<tool_call>" in forced.grammar  # calls are held to the call grammar
    assert "TEXT" in plan(tool_choice="auto").grammar and "TEXT" not in plan(tool_choice="required").grammar


def test_the_completion_budget_fits_the_models_context() -> None:
    from openft.errors import InvalidRequest
    from openft.serving.chat_plan import fit_context
    from openft.serving.types import GenerationParams

    assert fit_context(GenerationParams(max_new_tokens=256), 500, 512, explicit=False).max_new_tokens == 12
    assert fit_context(GenerationParams(max_new_tokens=12), 500, 512, explicit=True).max_new_tokens == 12
    for prompt, explicit in ((500, True), (512, False), (600, False)):
        with pytest.raises(InvalidRequest) as refused:
            fit_context(GenerationParams(max_new_tokens=100), prompt, 512, explicit=explicit)
        assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "messages")
