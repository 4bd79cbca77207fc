"""Tools and tool calls in chat text: how a conversation with ``tools`` and
assistant ``tool_calls`` is shown to a model, and how its answer is read back.

Used by training (so the loss covers the tool-call tokens exactly as the
model will emit them) and by serving (the same rendering for the prompt, and
the parser for the answer). No torch here.

Format: the **Hermes** convention of ChatML models (Qwen2.5, Hermes 2/3, and
SmolLM2's ChatML): function signatures listed in the system turn inside
``<tools></tools>``, each call emitted as
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, tool
results returned in a user turn inside ``<tool_response></tool_response>``.

* A template that renders ``tools`` itself and uses ``<tool_call>`` tags is
  used natively (``apply_chat_template(..., tools=...)``).
* A ChatML template without a tools section (the bundled SmolLM2 GGUF's) gets
  the Hermes convention written into the messages by :func:`to_template_messages`.
* Any other template (Llama 3.1 JSON calls, Mistral ``[TOOL_CALLS]``, ...)
  is refused: openft could not parse its calls reliably.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openft.ml_types import Tokenizer

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

_SYSTEM = (
    "You can call functions. Their signatures are within <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with a JSON object of its name and arguments within <tool_call></tool_call> "
    'tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class ToolFormatError(ValueError):
    """The model's chat template has no tool-call format openft can use."""


def tool_style(template: str | None) -> str:
    """``"native"`` (template renders tools with <tool_call> tags), ``"hermes"``
    (ChatML without tools: openft writes the convention in), or ``"none"``."""
    template = template or ""
    if "tools" in template and OPEN in template:
        return "native"
    if "<|im_start|>" in template:
        return "hermes"
    return "none"


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def call_text(tool_calls: list[dict[str, Any]]) -> str:
    """Assistant tool calls as the model writes them."""
    blocks = []
    for call in tool_calls:
        function = call.get("function") or call  # legacy ``function_call`` has no wrapper
        body = {"name": function.get("name"), "arguments": _arguments(function.get("arguments", {}))}
        blocks.append(f"{OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CLOSE}")
    return "\n".join(blocks)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def to_template_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, style: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) to give ``apply_chat_template``: plain-text messages
    with the Hermes convention written in (``style == "hermes"``), or messages
    in transformers' tool format plus ``tools`` for a native template."""
    tools = tools or None
    has_calls = any(m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function")
                    for m in messages)
    if (tools or has_calls) and style == "none":
        raise ToolFormatError("the model's chat template defines no tool-call format openft supports")
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], _text(message.get("content"))
        calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else [])
        if role == "developer":
            role = "system"
        if style == "native":
            if calls:
                functions = [c.get("function") or c for c in calls]
                out.append({"role": "assistant", "content": content, "tool_calls": [
                    {"type": "function",
                     "function": {"name": f.get("name"), "arguments": _arguments(f.get("arguments"))}}
                    for f in functions]})
            elif role in ("tool", "function"):
                out.append({"role": "tool", "content": content})
            else:
                out.append({"role": role, "content": content})
            continue
        if calls:
            content = (content + "\n" if content else "") + call_text(calls)
        if role in ("tool", "function"):
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if style == "native" or not tools:
        return out, tools if style == "native" else None
    listing = _SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}"}
    else:
        out.insert(0, {"role": "system", "content": listing})
    return out, None


def template_input(
    tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """:func:`to_template_messages` in the style of ``tokenizer``'s own chat template."""
    return to_template_messages(messages, tools, tool_style(getattr(tokenizer, "chat_template", None)))


@dataclass
class ParsedCall:
    name: str
    arguments: str  # a JSON string, as OpenAI returns it


def parse_tool_calls(text: str, names: set[str]) -> list[ParsedCall] | None:
    """The calls in an answer that consists of tool calls only, or None when
    the answer is text (or a call is malformed or names an unknown function)."""
    stripped = text.strip()
    if not stripped.startswith(OPEN):
        return None
    calls, end = [], 0
    for match in _CALL.finditer(stripped):
        if stripped[end:match.start()].strip():
            return None
        end = match.end()
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            return None
        if not isinstance(body, dict) or body.get("name") not in names:
            return None
        arguments = body.get("arguments", {})
        calls.append(ParsedCall(body["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)))
    if not calls or stripped[end:].strip():
        return None
    return calls


def may_become_call(text: str) -> bool:
    """Whether ``text`` so far could still be the start of a tool call."""
    stripped = text.lstrip()
    return stripped.startswith(OPEN) or OPEN.startswith(stripped)
