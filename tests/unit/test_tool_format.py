"""Reading tool calls back out of an answer, and which templates get which
tool format."""

from __future__ import annotations

import json

from openft.tool_format import call_text, may_become_call, parse_tool_calls, to_template_messages, tool_style

NAMES = {"get_weather", "get_time"}


def test_a_written_call_parses_back() -> None:
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
             {"type": "function", "function": {"name": "get_time", "arguments": {"city": "Oslo"}}}]
    parsed = parse_tool_calls(call_text(calls), NAMES)
    assert [(p.name, json.loads(p.arguments)) for p in parsed] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]


def test_text_unknown_functions_and_broken_json_are_not_calls() -> None:
    assert parse_tool_calls("It is sunny.", NAMES) is None
    assert parse_tool_calls('<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>', NAMES) is None
    assert parse_tool_calls('<tool_call>\n{"name": "get_time", "argu\n</tool_call>', NAMES) is None
    assert parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call> and more', NAMES) is None


def test_text_is_held_back_only_while_it_may_become_a_call() -> None:
    assert may_become_call("") and may_become_call("  <tool") and may_become_call("<tool_call>\n{")
    assert not may_become_call("<tod") and not may_become_call("Sure")


def test_template_styles() -> None:
    assert tool_style("{{ '<|im_start|>' + m.role }}") == "hermes"
    assert tool_style("{% if tools %}<tool_call>{% endif %}<|im_start|>") == "native"
    assert tool_style("[INST] {{ m.content }} [/INST]") == "none"


def test_hermes_rendering_lists_tools_and_wraps_results() -> None:
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    messages, native = to_template_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
    ], tools, "hermes")
    assert native is None
    assert messages[0]["content"].startswith("Be brief.\n\n") and '"name": "get_time"' in messages[0]["content"]
    assert messages[2] == {"role": "assistant", "content": '<tool_call>\n{"name": "get_time", "arguments": '
                                                          '{"city": "Oslo"}}\n</tool_call>'}
    assert messages[3] == {"role": "user", "content": "<tool_response>\n12:00\n</tool_response>"}
