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


def test_a_cut_call_keeps_only_its_arguments_and_a_call_cut_before_its_name_has_none() -> None:
    from openft.tool_format import parse_cut_tool_calls

    whole = '<tool_call>\n{"name":"get_weather","arguments":{"city":"Oslo"}}\n</tool_c'  # only the tag was cut
    [call] = parse_cut_tool_calls(whole, NAMES)
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    [cut] = parse_cut_tool_calls('<tool_call>\n{"name":"get_we', NAMES)
    assert (cut.name, cut.arguments) == ("get_weather", "")  # the one function the name can still be
    [early] = parse_cut_tool_calls("<tool_ca", NAMES)
    assert early.name not in NAMES  # no name yet: chat answers neither a call nor the markup


def test_conventions_parse_their_own_calls_and_cuts() -> None:
    from openft.tool_format import CONVENTIONS

    llama, mistral, harmony = CONVENTIONS["llama3_json"], CONVENTIONS["mistral"], CONVENTIONS["harmony"]
    assert [c.name for c in llama.parse('{"name": "get_time", "parameters": {"zone": "UTC"}}', NAMES)] == ["get_time"]
    assert llama.parse("Sunny today.", NAMES) is None
    both = '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    assert [c.name for c in mistral.parse(both, NAMES)] == ["get_time", "get_weather"]
    assert [c.name for c in mistral.parse(both.removeprefix("[TOOL_CALLS]"), NAMES)] == ["get_time", "get_weather"]
    cut = mistral.parse_cut(both[:-12], NAMES)
    assert [c.name for c in cut] == ["get_time", "get_weather"] and cut[1].arguments.startswith('{"city')
    call = '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"zone":"UTC"}'
    assert [(c.name, json.loads(c.arguments)) for c in harmony.parse(call, NAMES)] == [("get_time", {"zone": "UTC"})]


def test_a_mistral_grammar_asks_for_the_control_token_where_the_tokenizer_has_one() -> None:
    from openft.tool_format import CONVENTIONS

    functions = [("get_time", {"type": "object"})]
    assert '"[TOOL_CALLS]"' in CONVENTIONS["mistral"].grammar(functions, parallel=False, optional=False)
    assert "<[32768]>" in CONVENTIONS["mistral"].grammar(functions, parallel=False, optional=False,
                                                        specials={"[TOOL_CALLS]": 32768})


def test_streamed_reasoning_and_channels_give_what_the_whole_answer_gives() -> None:
    from openft.tool_format import HarmonyStream, ReasoningStream, harmony_split, split_reasoning

    samples = [(lambda: ReasoningStream(opened=False), lambda t: split_reasoning(t, opened=False),
                "<think>\nI add two and two.\n</think>\n\nFour."),
               (HarmonyStream, harmony_split,
                "<|channel|>analysis<|message|>I add.<|end|><|start|>assistant<|channel|>final<|message|>Four."),
               (HarmonyStream, harmony_split, "<"), (lambda: ReasoningStream(opened=False),
                                                    lambda t: split_reasoning(t, opened=False), "<th")]
    for make, whole, text in samples:
        thought, answer = whole(text)
        for step in (1, 2, 5):
            stream, pieces = make(), []
            for i in range(0, len(text), step):
                pieces.append(stream.feed(text[i:i + step]))
            pieces.append(stream.finish())
            assert ("".join(p[0] for p in pieces), "".join(p[1] for p in pieces)) == (thought or "", answer), text


def test_native_templates_get_call_ids_mistral_accepts() -> None:
    messages, _ = to_template_messages([
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abcdefghijkl", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_abcdefghijkl", "content": "12:00"},
    ], [{"type": "function", "function": {"name": "get_time"}}], "native")
    call_id = messages[1]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum() and messages[2]["tool_call_id"] == call_id


def test_a_folder_that_is_not_a_model_is_unreadable_not_a_crash(tmp_path) -> None:
    import pytest

    from openft.families import UnreadableModel, describe

    (tmp_path / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": "8k"}')
    assert describe("m", tmp_path).context_length is None  # not a count: unknown, not a 500
    (tmp_path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(UnreadableModel):
        describe("m", tmp_path)
