"""Training data: JSONL examples to token ids and loss labels, and padding-free
batches.

* Chat examples are rendered with the model's own chat template. The loss
  covers assistant messages only (their content, tool calls and end-of-turn
  marker), and skips assistant messages with ``weight: 0``. ``tools`` and
  assistant ``tool_calls`` are written in the model's tool format
  (:mod:`openft.tool_format`), exactly as serving shows them and parses them. Spans are found by rendering
  each conversation prefix: the text of ``messages[:i]`` plus the generation
  prompt is a prefix of the text through message ``i`` (ChatML, Llama 3).
  Where a template places text by position instead (Mistral's tools before
  the last user turn), the turn is what it adds to an empty assistant turn
  at the same place, found in order in the whole rendering; a turn found
  neither way is refused with a clear error.
* Prompt/completion examples: loss on the completion (plus EOS) only.
* Examples longer than ``max_seq_length`` are truncated; their line numbers
  are returned so the job can warn about them.
* :func:`pack` concatenates a batch into one row with ``position_ids`` that
  restart at 0 for every example. With ``use_cache=False``, transformers turns
  those into a block-diagonal causal mask, so attention stays inside each
  example and no token is padding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jinja2 import TemplateError

from openft import tool_format

if TYPE_CHECKING:
    from openft.ml_types import Tokenizer

IGNORE = -100


class DataError(Exception):
    """A training file the recipe cannot use; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None, code: str = "invalid_training_file"):
        super().__init__(message if line is None else f"Line {line}: {message}")
        self.line = line
        self.code = code


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    line: int

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def read_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, example) for every non-blank line."""
    for number, raw in enumerate(lines, 1):
        text = raw.strip().lstrip("\ufeff")
        if text:
            yield number, json.loads(text)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


def example_tools(raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    """An example's tools: ``tools``, or the legacy ``functions`` list."""
    if raw.get("tools"):
        return list(raw["tools"])
    if raw.get("functions"):
        return [{"type": "function", "function": f} for f in raw["functions"]]
    return None


def _render(tokenizer: Tokenizer, messages: list[dict[str, Any]], *, generation_prompt: bool,
            tools: list[dict[str, Any]] | None = None) -> str:
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(  # type: ignore[no-any-return]
        messages, tokenize=False, add_generation_prompt=generation_prompt, **extra
    )


def _label_spans(text: str, spans: list[tuple[int, int]], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [IGNORE] * len(ids)
    for index, (start, end) in enumerate(encoded["offset_mapping"]):
        if any(start >= s and end <= e and end > start for s, e in spans):
            labels[index] = ids[index]
    return ids, labels


def chat_example(tokenizer: Tokenizer, raw: dict[str, Any], line: int) -> Example:
    """Loss on assistant turns: their text, their tool calls (as the model
    writes them) and their end-of-turn marker."""
    try:
        messages, tools = tool_format.template_input(tokenizer, raw["messages"], example_tools(raw))
    except tool_format.ReasoningFormatError as exc:
        raise DataError(f"has reasoning_content, but {exc}", line, code="invalid_reasoning") from exc
    except tool_format.ToolFormatError as exc:
        raise DataError(f"has tools or tool calls, but {exc}", line, code="invalid_tools") from exc
    try:
        return _chat_example(tokenizer, messages, tools, [m.get("weight", 1) for m in raw["messages"]], line)
    except TemplateError as exc:  # the template's own raise_exception
        raise DataError(f"the model's chat template refused this conversation: {exc}", line) from exc


def _chat_example(tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  weights: list[int], line: int) -> Example:
    text = _render(tokenizer, messages, generation_prompt=False, tools=tools)
    offset = 1 if len(messages) > len(weights) else 0  # a system turn listing the tools was added
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or weights[index - offset] == 0:
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True, tools=tools) if index else ""
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False, tools=tools)
        if through.startswith(before) and text.startswith(through):
            spans.append((len(before), len(through)))
            continue
        # Templates that place something by position (Mistral lists the tools
        # before the *last* user turn) do not render prefix by prefix: the turn
        # is what its rendering adds to an empty assistant turn in the same
        # place, found in order in the whole conversation.
        empty = _render(tokenizer, [*messages[:index], {"role": "assistant", "content": ""}],
                        generation_prompt=False, tools=tools)
        turn = through[len(os.path.commonprefix([empty, through])):]
        at = text.find(turn, spans[-1][1] if spans else 0)
        if not turn.strip() or at < 0:
            raise DataError(
                "the model's chat template does not render this conversation's assistant turns in a way "
                "that can be located for the loss",
                line,
            )
        spans.append((at, at + len(turn)))
    ids, labels = _label_spans(text, spans, tokenizer)
    return Example(ids, labels, line)


def prompt_completion_example(tokenizer: Tokenizer, raw: dict[str, Any], line: int) -> Example:
    prompt = tokenizer(raw["prompt"], add_special_tokens=False)["input_ids"]
    completion = tokenizer(raw["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    return Example(prompt + completion, [IGNORE] * len(prompt) + completion, line)


def preference_pair(tokenizer: Tokenizer, raw: dict[str, Any], line: int) -> tuple[Example, Example]:
    """(chosen, rejected): the prompt conversation followed by each answer, with
    loss labels on the answer only."""
    prompt, tools = raw["input"]["messages"], example_tools(raw["input"])
    chosen = chat_example(tokenizer, {"messages": prompt + raw["preferred_output"][:1], "tools": tools}, line)
    rejected = chat_example(tokenizer, {"messages": prompt + raw["non_preferred_output"][:1], "tools": tools}, line)
    for example in (chosen, rejected):  # prompt turns never carry loss in DPO
        labels = example.labels
        last = max(i for i, label in enumerate(labels) if label != IGNORE)
        first = last
        while first > 0 and labels[first - 1] != IGNORE:
            first -= 1
        example.labels = [IGNORE] * first + labels[first:]
    return chosen, rejected


def tokenize_preferences(
    tokenizer: Tokenizer, lines: Iterable[str], *, max_seq_length: int
) -> tuple[list[tuple[Example, Example]], list[int]]:
    """Preference pairs of a file, and the lines that were truncated."""
    pairs, truncated = [], []
    for line, raw in read_jsonl(lines):
        if "input" not in raw:
            raise DataError("is not a preference example", line)
        chosen, rejected = preference_pair(tokenizer, raw, line)
        if max(len(chosen.input_ids), len(rejected.input_ids)) > max_seq_length:
            truncated.append(line)
            chosen, rejected = (
                Example(e.input_ids[:max_seq_length], e.labels[:max_seq_length], line)
                for e in (chosen, rejected)
            )
        if not chosen.n_label_tokens or not rejected.n_label_tokens:
            raise DataError(f"has no answer tokens left within max_seq_length={max_seq_length}", line)
        pairs.append((chosen, rejected))
    return pairs, truncated


def tokenize(
    tokenizer: Tokenizer, lines: Iterable[str], *, max_seq_length: int
) -> tuple[list[Example], list[int]]:
    """Examples of a chat or prompt/completion file, and the lines that were truncated."""
    examples, truncated = [], []
    for line, raw in read_jsonl(lines):
        if "messages" in raw:
            example = chat_example(tokenizer, raw, line)
        elif "prompt" in raw:
            example = prompt_completion_example(tokenizer, raw, line)
        else:
            raise DataError("is neither a chat nor a prompt/completion example", line)
        if len(example.input_ids) > max_seq_length:
            truncated.append(line)
            example = Example(
                example.input_ids[:max_seq_length], example.labels[:max_seq_length], line
            )
        if example.n_label_tokens == 0:
            raise DataError(
                f"has no trainable tokens left within max_seq_length={max_seq_length}", line
            )
        examples.append(example)
    return examples, truncated


def pack(batch: list[Example]) -> dict[str, torch.Tensor]:
    """One padding-free row: concatenated ids, per-example positions, labels.
    The first label of every example is ignored, so no token is ever
    predicted across an example boundary."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in batch:
        ids += example.input_ids
        labels += [IGNORE] + example.labels[1:]
        positions += range(len(example.input_ids))
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
    }


@dataclass
class Prompt:
    """One line of a reinforcement file: the prompt's token ids (chat template
    plus generation prompt), and its ``item`` (every key but ``messages`` and
    ``tools``), which graders see as ``{{item.<key>}}``."""

    input_ids: list[int]
    item: dict[str, Any]
    line: int
    tool_names: frozenset[str] = frozenset()
    """Functions the line offers (completions that call them are parsed for graders)."""


PROMPT_KEYS = ("messages", "tools")


def tokenize_prompts(tokenizer: Tokenizer, lines: Iterable[str], *, max_prompt_length: int) -> list[Prompt]:
    """The prompts of a reinforcement file; a prompt longer than
    ``max_prompt_length`` (``max_seq_length`` less the completion budget) is
    an error naming its line, since cutting a prompt changes the task."""
    prompts = []
    for line, raw in read_jsonl(lines):
        if "messages" not in raw:
            raise DataError("has no 'messages' (reinforcement format)", line)
        try:
            messages, tools = tool_format.template_input(tokenizer, raw["messages"], example_tools(raw))
        except tool_format.ToolFormatError as exc:
            raise DataError(f"has tools, but {exc}", line, code="invalid_tools") from exc
        text = _render(tokenizer, messages, generation_prompt=True, tools=tools)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            raise DataError(
                f"has a prompt of {len(ids)} tokens; at most {max_prompt_length} fit "
                "(max_seq_length less the completion budget)", line)
        names = frozenset(t["function"]["name"] for t in example_tools(raw) or [] if "function" in t)
        prompts.append(Prompt(ids, {k: v for k, v in raw.items() if k not in PROMPT_KEYS}, line, names))
    return prompts

