"""Streaming validation of fine-tuning JSONL files, with OpenAI's rules.

:class:`TrainingFileValidator` is fed the bytes of an upload as they arrive
and keeps only the unfinished last line, so memory stays flat in file size.
It stops at the first bad line and reports it by 1-based number with a
stable ``code``. One file holds one format: chat (``messages`` ending with
the assistant's answer), reinforcement (``messages`` ending before the
answer, plus any keys graders read as ``{{item.<key>}}``), preference
(``input`` / ``preferred_output`` / ``non_preferred_output``) or
prompt/completion. Blank lines are skipped (they still count for numbering).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from openft.domain import FileFormat

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True)
class FileSummary:
    format: FileFormat
    n_examples: int


class FileValidationError(Exception):
    """The first problem found in a file: ``line`` is 1-based (None for the whole file)."""

    def __init__(self, code: str, detail: str, line: int | None):
        self.code = code
        self.line = line
        self.message = f"Line {line}: {detail}" if line is not None else detail
        super().__init__(self.message)


class _LineError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class TrainingFileValidator:
    """Feed bytes with :meth:`feed`, then call :meth:`finish` for the summary."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        """Pieces of the unfinished last line (joined once, when its newline arrives:
        a line that spans many chunks costs its length, not its length squared)."""
        self._line = 0
        self._format: FileFormat | None = None
        self._format_line = 0
        self._examples = 0
        self.error: FileValidationError | None = None

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        if b"\n" not in data:
            self._pending.append(data)
            return
        first, *lines, last = data.split(b"\n")
        self._pending.append(first)
        lines.insert(0, b"".join(self._pending))
        self._pending = [last]
        for raw in lines:
            self._check_line(raw)
            if self.error is not None:
                return

    def finish(self) -> FileSummary:
        """The file's format and example count; raises FileValidationError if bad."""
        pending, self._pending = b"".join(self._pending), []
        if self.error is None and pending:
            self._check_line(pending)
        if self.error is not None:
            raise self.error
        if self._format is None:
            raise FileValidationError("empty_file", "The file contains no examples.", None)
        return FileSummary(self._format, self._examples)

    def _check_line(self, raw: bytes) -> None:
        self._line += 1
        try:
            self._check_example(raw)
        except _LineError as problem:
            self.error = FileValidationError(problem.code, problem.detail, self._line)

    def _check_example(self, raw: bytes) -> None:
        if self._line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _LineError("invalid_encoding", f"is not valid UTF-8 (byte {exc.start + 1}).") from None
        if not text.strip():
            return
        try:
            example = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _LineError("invalid_json", f"is not valid JSON: {exc.msg} (column {exc.colno}).") from None
        except RecursionError:
            raise _LineError("invalid_json", "is nested too deeply to be a fine-tuning example.") from None
        if not isinstance(example, dict):
            raise _LineError(
                "invalid_line_type", f"must be a JSON object, got {type(example).__name__}."
            )
        found = _detect_format(example)
        if self._format is None:
            self._format, self._format_line = found, self._line
        elif found is not self._format:
            raise _LineError(
                "mixed_formats",
                f"is in {_FORMAT_NAMES[found]} format, but line {self._format_line} is in "
                f"{_FORMAT_NAMES[self._format]} format; a file holds one format.",
            )
        _CHECKS[found](example)
        self._examples += 1


_FORMAT_NAMES = {
    FileFormat.CHAT: "chat",
    FileFormat.REINFORCEMENT: "reinforcement (its last message is not an assistant answer)",
    FileFormat.PREFERENCE: "preference",
    FileFormat.PROMPT_COMPLETION: "prompt_completion",
}


def _detect_format(example: dict[str, Any]) -> FileFormat:
    if "messages" in example:
        messages = example["messages"]
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") in CHAT_ROLES - {"assistant"}:
            return FileFormat.REINFORCEMENT
        return FileFormat.CHAT
    if {"input", "preferred_output", "non_preferred_output"} & example.keys():
        return FileFormat.PREFERENCE
    if {"prompt", "completion"} & example.keys():
        return FileFormat.PROMPT_COMPLETION
    raise _LineError(
        "unknown_format",
        "matches no fine-tuning format: expected 'messages' (chat), 'input' with "
        "'preferred_output' and 'non_preferred_output' (preference), or 'prompt' and "
        "'completion'.",
    )


def _check_chat(example: dict[str, Any]) -> None:
    messages = _messages(example.get("messages"), "messages")
    _check_tools(example)
    trainable = False
    for index, message in enumerate(messages):
        role = message["role"]
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                raise _LineError(
                    "invalid_weight",
                    f"messages[{index}] has a weight, but only assistant messages may have one.",
                )
            if isinstance(weight, bool) or weight not in (0, 1):
                raise _LineError(
                    "invalid_weight", f"messages[{index}].weight must be 0 or 1, got {weight!r}."
                )
        if role == "assistant" and message.get("weight", 1) == 1 and _has_output(message):
            trainable = True
    if not trainable:
        raise _LineError(
            "missing_assistant_message",
            "has no assistant message with content to train on (weight 0 messages do not count).",
        )


def _check_reinforcement(example: dict[str, Any]) -> None:
    """A prompt for sampling: messages up to (not including) the answer."""
    _messages(example.get("messages"), "messages")
    _check_tools(example)


def _check_preference(example: dict[str, Any]) -> None:
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in example:
            raise _LineError("invalid_preference", f"is missing '{key}' (preference format).")
    prompt = example["input"]
    if not isinstance(prompt, dict):
        raise _LineError("invalid_preference", "'input' must be an object with 'messages'.")
    _messages(prompt.get("messages"), "input.messages")
    _check_tools(prompt)
    for key in ("preferred_output", "non_preferred_output"):
        output = _messages(example[key], key)
        if len(output) != 1 or output[0]["role"] != "assistant" or not _has_output(output[0]):
            raise _LineError(
                "invalid_preference",
                f"'{key}' must hold exactly one assistant message with content.",
            )


def _check_prompt_completion(example: dict[str, Any]) -> None:
    for key in ("prompt", "completion"):
        if not isinstance(example.get(key), str):
            raise _LineError(
                "invalid_prompt_completion", f"'{key}' must be a string (prompt/completion format)."
            )
    if not example["completion"].strip():
        raise _LineError("invalid_prompt_completion", "'completion' must not be empty.")


_CHECKS = {
    FileFormat.CHAT: _check_chat,
    FileFormat.REINFORCEMENT: _check_reinforcement,
    FileFormat.PREFERENCE: _check_preference,
    FileFormat.PROMPT_COMPLETION: _check_prompt_completion,
}


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _LineError("invalid_messages", f"'{where}' must be a non-empty list of messages.")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _LineError("invalid_messages", f"{where}[{index}] must be an object.")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise _LineError(
                "invalid_role",
                f"{where}[{index}] has role {role!r}; expected one of "
                f"{', '.join(sorted(CHAT_ROLES))}.",
            )
        _check_content(message, f"{where}[{index}]")
        if "reasoning_content" in message and (role != "assistant" or not isinstance(
                message["reasoning_content"], str | None)):
            raise _LineError("invalid_reasoning", f"{where}[{index}].reasoning_content must be a string on an "
                             "assistant message (the model's reasoning before its answer).")
    return value


def _check_content(message: dict[str, Any], where: str) -> None:
    content = message.get("content")
    if content is None:
        if message["role"] == "assistant" and _has_calls(message):
            return
        raise _LineError("invalid_content", f"{where} has no content.")
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for index, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise _LineError(
                    "invalid_content",
                    f"{where}.content[{index}] must be a text part "
                    '({"type": "text", "text": "..."}); other parts are not supported.',
                )
        return
    raise _LineError(
        "invalid_content", f"{where}.content must be a string or a list of text parts."
    )


def _check_tools(container: dict[str, Any]) -> None:
    for key in ("tools", "functions"):
        if key in container and not isinstance(container[key], list):
            raise _LineError("invalid_tools", f"'{key}' must be a list.")
    if "parallel_tool_calls" in container and not isinstance(
        container["parallel_tool_calls"], bool
    ):
        raise _LineError("invalid_tools", "'parallel_tool_calls' must be true or false.")


def _has_calls(message: dict[str, Any]) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call"))


def _has_output(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):
        return any(part.get("text", "").strip() for part in content)
    return _has_calls(message)
