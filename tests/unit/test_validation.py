"""The streaming JSONL validator: every bad-file case names its line and code."""

from __future__ import annotations

import json

import pytest

from openft.domain import FileFormat
from openft.services.validation import FileValidationError, TrainingFileValidator

from support import chat_example, jsonl, preference_example


def validate(data: bytes, chunk: int | None = None):
    validator = TrainingFileValidator()
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        validator.feed(data[start : start + step])
    return validator.finish()


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


GOOD = line(chat_example(0))
USER = {"role": "user", "content": "hi"}


def chat(*messages: dict) -> bytes:
    return line({"messages": list(messages)})


BAD_FILES = [
    ("invalid_encoding", 2, GOOD + b'{"messages": "\xff\xfe"}\n'),
    ("invalid_json", 3, GOOD + GOOD + b'{"messages": [}\n'),
    ("invalid_line_type", 1, b"[1, 2, 3]\n"),
    ("unknown_format", 2, GOOD + line({"text": "free text"})),
    ("mixed_formats", 2, GOOD + line({"prompt": "a", "completion": "b"})),
    ("invalid_messages", 1, line({"messages": []})),
    ("invalid_messages", 1, line({"messages": "hello"})),
    ("invalid_role", 2, GOOD + chat(USER, {"role": "robot", "content": "x"})),
    ("invalid_weight", 1, chat({**USER, "weight": 1}, {"role": "assistant", "content": "x"})),
    ("invalid_weight", 1, chat(USER, {"role": "assistant", "content": "x", "weight": 2})),
    ("invalid_weight", 1, chat(USER, {"role": "assistant", "content": "x", "weight": True})),
    ("mixed_formats", 2, GOOD + chat(USER)),  # an answer missing in a chat file
    ("missing_assistant_message", 1, chat(USER, {"role": "assistant", "content": "x", "weight": 0})),
    ("missing_assistant_message", 1, chat(USER, {"role": "assistant", "content": "  "})),
    ("invalid_content", 1, chat({"role": "user", "content": None}, {"role": "assistant", "content": "x"})),
    (
        "invalid_content",
        1,
        chat(
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "x"},
        ),
    ),
    ("invalid_tools", 1, line({**chat_example(0), "tools": {"a": 1}})),
    ("invalid_reasoning", 2, GOOD + chat(USER, {"role": "assistant", "content": "x",
                                               "reasoning_content": {"nested": ["not", "text"]}})),
    ("invalid_reasoning", 1, chat({**USER, "reasoning_content": "users do not reason here"},
                                  {"role": "assistant", "content": "x"})),
    ("invalid_preference", 2, line(preference_example(0)) + line({
        "input": {"messages": [USER]}, "preferred_output": [{"role": "assistant", "content": "x"}]})),
    (
        "invalid_preference",
        1,
        line({**preference_example(0), "preferred_output": [{"role": "assistant", "content": "a"}] * 2}),
    ),
    ("invalid_preference", 1, line({**preference_example(0), "input": "just text"})),
    ("invalid_prompt_completion", 1, line({"prompt": "a", "completion": 3})),
    ("invalid_prompt_completion", 2,
     line({"prompt": "a", "completion": "b"}) + line({"prompt": "a", "completion": ""})),
]


class TestBadFiles:
    @pytest.mark.parametrize("code,bad_line,data", BAD_FILES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_FILES)])
    def test_rejected_with_code_and_line(self, code: str, bad_line: int, data: bytes) -> None:
        with pytest.raises(FileValidationError) as caught:
            validate(data)
        assert caught.value.code == code
        assert caught.value.line == bad_line
        assert caught.value.message.startswith(f"Line {bad_line}: ")

    @pytest.mark.parametrize("data", [b"", b"\n\n  \n"])
    def test_empty_file(self, data: bytes) -> None:
        with pytest.raises(FileValidationError) as caught:
            validate(data)
        assert caught.value.code == "empty_file"
        assert caught.value.line is None

    def test_first_bad_line_wins(self) -> None:
        data = GOOD + b"not json\n" + b"[]\n"
        with pytest.raises(FileValidationError) as caught:
            validate(data)
        assert (caught.value.code, caught.value.line) == ("invalid_json", 2)

    def test_blank_lines_still_count_for_numbering(self) -> None:
        with pytest.raises(FileValidationError) as caught:
            validate(GOOD + b"\n\n" + b"oops\n")
        assert caught.value.line == 4


class TestGoodFiles:
    def test_chat(self) -> None:
        summary = validate(jsonl([chat_example(i) for i in range(5)]))
        assert summary.format is FileFormat.CHAT
        assert summary.n_examples == 5

    def test_preference(self) -> None:
        summary = validate(jsonl([preference_example(i) for i in range(3)]))
        assert (summary.format, summary.n_examples) == (FileFormat.PREFERENCE, 3)

    def test_reinforcement_prompts_with_items(self) -> None:
        lines = [{"messages": [{"role": "system", "content": "Answer."}, {"role": "user", "content": f"{i} + 1?"}],
                  "answer": str(i + 1), "meta": {"level": i}} for i in range(4)]
        summary = validate(jsonl(lines))
        assert (summary.format, summary.n_examples) == (FileFormat.REINFORCEMENT, 4)
        with pytest.raises(FileValidationError) as mixed:
            validate(jsonl(lines) + GOOD)
        assert (mixed.value.code, mixed.value.line) == ("mixed_formats", 5)
        assert "reinforcement (its last message is not an assistant answer)" in str(mixed.value)

    def test_prompt_completion_without_trailing_newline(self) -> None:
        data = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}'
        summary = validate(data)
        assert (summary.format, summary.n_examples) == (FileFormat.PROMPT_COMPLETION, 2)

    def test_crlf_bom_blank_lines_and_weights(self) -> None:
        example = {
            "messages": [
                USER,
                {"role": "assistant", "content": "first", "weight": 0},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "assistant", "content": "It is 42.", "weight": 1},
            ],
            "tools": [],
            "parallel_tool_calls": False,
        }
        data = b"\xef\xbb\xbf" + json.dumps(example).encode() + b"\r\n\r\n" + GOOD
        assert validate(data).n_examples == 2

    def test_byte_by_byte_feeding_matches_whole(self) -> None:
        data = jsonl([{"messages": [USER, {"role": "assistant", "content": "héllo ✓ 日本"}]}] * 3)
        assert validate(data, chunk=1) == validate(data)

    def test_error_found_across_chunk_boundaries(self) -> None:
        data = GOOD * 3 + b'{"messages": [{"role": "user", "content": "caf\xc3'
        with pytest.raises(FileValidationError) as caught:
            validate(data + b"\xa9\xff"[1:] + b'"}]}\n', chunk=7)
        assert (caught.value.code, caught.value.line) == ("invalid_encoding", 4)
