"""Tools and tool calls in chat text: how a conversation with ``tools`` and
assistant ``tool_calls`` is shown to a model, and how its answer is read back.

Used by training (so the loss covers the tool-call tokens exactly as the
model will emit them), by serving (the same rendering for the prompt, the
parser for the answer, the grammar of a forced call) and by RFT's grading.
No torch here.

Each model family publishes its own convention in its chat template; a
:class:`Convention` is detected from the template (:func:`convention_of`):

* **hermes** (Qwen2.5/Qwen3, Hermes, SmolLM3, any ChatML model): calls as
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. A
  template that renders ``tools`` itself is used natively; a ChatML template
  without a tools section (the bundled SmolLM2's) gets the convention written
  into the messages (signatures in the system turn inside ``<tools>``,
  results in a user turn inside ``<tool_response>``).
* **llama3_json** (Llama 3.1+): one call as a bare JSON object
  ``{"name": ..., "parameters": {...}}`` ending the turn; results in the
  ``ipython`` role. Llama 3.x templates take one call per turn, so a request
  with parallel calls gets one.
* **mistral** (Mistral, Mixtral): ``[TOOL_CALLS]`` then a JSON list of
  ``{"name", "arguments"}`` objects (the marker may be a control token that
  decoding drops, so the list alone also reads as calls).

* **harmony** (gpt-oss): messages on channels between control tokens; a
  call is a commentary message ``to=functions.NAME`` whose body is the JSON
  arguments, the answer is on ``final``, reasoning on ``analysis``
  (:class:`Harmony`, :class:`HarmonyStream`).

Any other template is refused (``ToolFormatError``, a 400 naming the model).
Reasoning (``reasoning_content``) is placed the template's way too
(:func:`with_reasoning`) and read back out of answers (:func:`split_answer`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openft.ml_types import Tokenizer

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_OPEN = "[TOOL_CALLS]"
CHANNEL, MESSAGE, END, START = "<|channel|>", "<|message|>", "<|end|>", "<|start|>"
"""gpt-oss's harmony markers (control tokens: the engine keeps them in the text of such models)."""
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

_SYSTEM = (
    "You can call functions. Their signatures are within <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with a JSON object of its name and arguments within <tool_call></tool_call> "
    'tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class ToolFormatError(ValueError):
    """The model's chat template has no tool-call format openft can use."""


def tool_style(template: str | None) -> str:
    """How messages with tools reach the template: ``"native"`` (it renders
    tools and calls itself, in a convention openft reads), ``"hermes"`` (ChatML
    without tools: openft writes the Hermes convention in), or ``"none"``."""
    template = template or ""
    if "tools" in template and (OPEN in template or _llama3_template(template) or MISTRAL_OPEN in template
                                or CHANNEL in template):
        return "native"
    if "<|im_start|>" in template:
        return "hermes"
    return "none"


def _llama3_template(template: str) -> bool:
    return "<|start_header_id|>" in template and "ipython" in template and '"parameters"' in template


def convention_name(template: str | None) -> str:
    """The tool-call convention of a chat template: ``hermes``,
    ``llama3_json``, ``mistral``, ``harmony``, or ``none``."""
    template = template or ""
    if tool_style(template) == "none":
        return "none"
    if CHANNEL in template:
        return "harmony"
    if MISTRAL_OPEN in template:
        return "mistral"
    if _llama3_template(template) and OPEN not in template:
        return "llama3_json"
    return "hermes"


def convention_of(tokenizer: Tokenizer) -> Convention:
    """The convention of ``tokenizer``'s chat template (Hermes when it has none:
    callers refuse tools first through :func:`template_input`)."""
    return CONVENTIONS[convention_name(getattr(tokenizer, "chat_template", None))]


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


def _call_id(value: Any) -> str:
    """A call id as templates take it: kept when it is 9 letters or digits
    (Mistral's templates refuse any other), else mapped to such an id, the
    same for a call and its result."""
    text = str(value)
    if len(text) == 9 and text.isalnum():
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:9]


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
                out.append({"role": "assistant", "content": content, "tool_calls": [
                    {"type": "function", **({"id": _call_id(c["id"])} if c.get("id") else {}),
                     "function": {"name": (c.get("function") or c).get("name"),
                                  "arguments": _arguments((c.get("function") or c).get("arguments"))}}
                    for c in calls]})
            elif role in ("tool", "function"):
                result = {"role": "tool", "content": content}
                if message.get("tool_call_id"):
                    result["tool_call_id"] = _call_id(message["tool_call_id"])
                out.append(result)
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
    """:func:`to_template_messages` in the style of ``tokenizer``'s own chat
    template, with assistant reasoning (``reasoning_content``) shown its way
    (:func:`with_reasoning`)."""
    template = getattr(tokenizer, "chat_template", None)
    rendered, native_tools = to_template_messages(messages, tools, tool_style(template))
    return with_reasoning(messages, rendered, template), native_tools


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ReasoningFormatError(ToolFormatError):
    """Training data carries reasoning, but the model's template has no place for it."""


def reasoning_style(template: str | None) -> str:
    """How a chat template shows reasoning: ``harmony`` (gpt-oss: an
    assistant message's ``thinking`` in the analysis channel), ``native`` (it
    renders ``reasoning_content`` itself, as Qwen3's does), ``think`` (it
    knows ``<think>`` blocks: openft writes them into the content), or
    ``none``."""
    template = template or ""
    if CHANNEL in template and "analysis" in template:
        return "harmony"
    if "reasoning_content" in template and THINK_OPEN in template:
        return "native"
    return "think" if THINK_OPEN in template else "none"


def with_reasoning(original: list[dict[str, Any]], rendered: list[dict[str, Any]],
                   template: str | None) -> list[dict[str, Any]]:
    """``rendered`` (template messages, in the order of ``original`` after any
    added system turn) with each assistant's ``reasoning_content`` in place."""
    reasoning = [m.get("reasoning_content") for m in original if m.get("role") == "assistant"]
    if not any(reasoning):
        return rendered
    style = reasoning_style(template)
    if style == "none":
        raise ReasoningFormatError("the model's chat template has no place for reasoning (no <think> blocks)")
    out, turns = [], iter(reasoning)
    for message in rendered:
        if message["role"] == "assistant":
            thought = next(turns, None)
            if thought:
                message = dict(message)
                if style == "harmony":
                    message["thinking"] = thought
                elif style == "native":
                    message["reasoning_content"] = thought
                else:
                    message["content"] = f"{THINK_OPEN}\n{thought}\n{THINK_CLOSE}\n\n{message.get('content') or ''}"
        out.append(message)
    return out


def opens_thinking(tokenizer: Tokenizer, prompt: list[int]) -> bool:
    """Whether ``prompt`` ends inside a ``<think>`` block its template opened
    (its generation prompt's own, not a ``<think>`` in the user's text)."""
    return tokenizer.decode(prompt[-16:]).rstrip().endswith(THINK_OPEN)


def split_reasoning(text: str, *, opened: bool) -> tuple[str | None, str]:
    """(reasoning, answer) of a reasoning model's whole output: what is inside
    its ``<think>`` block (``opened``: the prompt already opened it) and the
    rest. An answer cut inside the block is all reasoning."""
    stream = ReasoningStream(opened=opened)
    thought, answer = stream.feed(text)
    more_thought, more_answer = stream.finish()
    return (thought + more_thought) if stream.thought else None, answer + more_answer


def reasoning_stream(style: str, *, opened: bool) -> ReasoningStream | HarmonyStream | None:
    """The splitter of a streamed answer in reasoning ``style``; None: no reasoning."""
    if style == "harmony":
        return HarmonyStream()
    return ReasoningStream(opened=opened) if style != "none" else None


def split_answer(text: str, style: str, *, opened: bool) -> tuple[str | None, str]:
    """(reasoning, answer) of a whole output in reasoning ``style``."""
    if style == "harmony":
        return harmony_split(text)
    return split_reasoning(text, opened=opened) if style != "none" else (None, text)


class ReasoningStream:
    """Splits a reasoning model's output, piece by piece as it streams, into
    reasoning (inside ``<think>``) and answer; text that may still be part of
    a tag, and whitespace around the reasoning, is held back."""

    def __init__(self, *, opened: bool):
        self.state = "inside" if opened else "start"  # start -> inside -> after -> answer
        self.buffer = ""
        self.thought = opened  # whether there was a reasoning block
        self.leading = True

    def feed(self, piece: str) -> tuple[str, str]:
        """(reasoning, answer) that may be shown now."""
        self.buffer += piece
        thought = answer = ""
        while True:
            if self.state == "start":
                stripped = self.buffer.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self.buffer, self.state, self.thought = stripped[len(THINK_OPEN):], "inside", True
                    continue
                if THINK_OPEN.startswith(stripped):
                    return thought, answer
                self.state = "answer"
            if self.state == "inside":
                if self.leading:  # whitespace that opens the reasoning is not part of it
                    self.buffer = self.buffer.lstrip()
                    if not self.buffer:
                        return thought, answer
                    self.leading = False
                end = self.buffer.find(THINK_CLOSE)
                if end >= 0:
                    thought += self.buffer[:end].rstrip()
                    self.buffer, self.state = self.buffer[end + len(THINK_CLOSE):], "after"
                    continue
                partial = next((n for n in range(min(len(THINK_CLOSE) - 1, len(self.buffer)), 0, -1)
                                if THINK_CLOSE.startswith(self.buffer[-n:])), 0)
                head = self.buffer[: len(self.buffer) - partial]
                shown = len(head.rstrip())  # whitespace may be the one before the close: held
                thought += self.buffer[:shown]
                self.buffer = self.buffer[shown:]
                return thought, answer
            if self.state == "after":
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    return thought, answer
                self.state = "answer"
            answer += self.buffer
            self.buffer = ""
            return thought, answer

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the output."""
        rest, self.buffer = self.buffer, ""
        if self.state == "inside":
            return rest.rstrip(), ""
        return "", "" if self.state == "after" else rest


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


def parse_cut_tool_calls(text: str, names: set[str]) -> list[ParsedCall] | None:
    """The calls in an answer cut by ``max_tokens`` inside a tool call: the
    complete ones, then the cut one with its unfinished arguments (as OpenAI
    returns them with ``finish_reason: "length"``). None when the answer is
    not tool calls. A cut name is completed when exactly one function starts
    with it; otherwise the call keeps the part that was written."""
    stripped = text.strip()
    if not stripped or not (stripped.startswith(OPEN) or OPEN.startswith(stripped)):
        return None
    calls, end = [], 0
    for match in _CALL.finditer(stripped):
        complete = parse_tool_calls(stripped[end:match.end()], names)
        if complete is None:
            return None
        calls.extend(complete)
        end = match.end()
    rest = stripped[end:].strip()
    if not rest:
        return calls or None
    if not (rest.startswith(OPEN) or OPEN.startswith(rest)):
        return None
    body = rest[len(OPEN):].strip()
    try:  # the call is whole and only its closing tag was cut
        value, end = json.JSONDecoder().raw_decode(body)
        if CLOSE.startswith(body[end:].strip()) and (complete := _call_objects(value, "arguments", names)):
            return [*calls, *complete]
    except json.JSONDecodeError:
        pass
    cut = _cut_object(body, "arguments", names)
    if cut is None or CLOSE in cut.arguments:  # a complete call whose JSON did not parse is not cut
        return None
    return [*calls, cut]


def may_become_call(text: str) -> bool:
    """Whether ``text`` so far could still be the start of a tool call."""
    stripped = text.lstrip()
    return stripped.startswith(OPEN) or OPEN.startswith(stripped)


# ------------------------------------------------------------ conventions
class Convention:
    """One family's way of writing calls: parse an answer, parse a cut one,
    say whether text may still become a call, and the grammar of calls."""

    name = "hermes"
    parallel = True  # whether one turn may hold several calls

    def parse(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        return parse_tool_calls(text, names)

    def parse_cut(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        return parse_cut_tool_calls(text, names)

    def may_become_call(self, text: str) -> bool:
        return may_become_call(text)

    def call_json(self, functions: list[tuple[str, Any]]) -> str:
        """One call of any of ``functions`` ((name, parameters schema)) as a
        JSON object, in llguidance's ``%json`` (compact whitespace)."""
        key = self.arguments_key
        options = [{"type": "object", "properties": {"name": {"const": name}, key: parameters},
                    "required": ["name", key], "additionalProperties": False} for name, parameters in functions]
        schema = dict(options[0]) if len(options) == 1 else {"anyOf": options}
        schema["x-guidance"] = {"whitespace_flexible": False}
        return f"%json {json.dumps(schema)}"

    def grammar(self, functions: list[tuple[str, Any]], *, parallel: bool, optional: bool,
                specials: dict[str, int] | None = None) -> str | None:
        """Lark rules for calls of ``functions``; None: no grammar (the calls
        are read after the fact). ``specials``: the tokenizer's control tokens
        (text -> id), for markers that are one (llguidance's ``<[id]>``)."""
        calls = 'call ("\\n" call)*' if parallel else "call"
        lark = (f"start: {'TEXT | ' if optional else ''}calls\n"
                f"calls: {calls}\n"
                'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
                f"body: {self.call_json(functions)}\n")
        if optional:
            lark += "TEXT: /(.|\\n)*/ & ~/\\s*<tool_call>(.|\\n)*/\n"
        return lark

    arguments_key = "arguments"


def _call_objects(value: Any, key: str, names: set[str]) -> list[ParsedCall] | None:
    objects = value if isinstance(value, list) else [value]
    calls = []
    for body in objects:
        if not isinstance(body, dict) or body.get("name") not in names or set(body) - {"name", key}:
            return None
        arguments = body.get(key, {})
        calls.append(ParsedCall(body["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)))
    return calls or None


def _cut_object(text: str, key: str, names: set[str]) -> ParsedCall | None:
    """The call a cut JSON object began (``{"name": ..., key: <partial>``)."""
    match = re.match(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)("?)\s*(?:,\s*"' + key + r'"\s*:\s*(.*))?',
                     text.strip(), re.DOTALL)
    if match is None:
        return ParsedCall(next(iter(names)) if len(names) == 1 else "", "")
    name, closed, arguments = match.group(1), match.group(2), match.group(3) or ""
    if not closed:
        starting = [n for n in names if n.startswith(name)]
        name = starting[0] if len(starting) == 1 else name
    return ParsedCall(name, arguments.rstrip())


class Llama3Json(Convention):
    """Llama 3.1+: ``{"name": ..., "parameters": {...}}`` as the whole answer."""

    name, parallel, arguments_key = "llama3_json", False, "parameters"
    TAG = "<|python_tag|>"

    def _body(self, text: str) -> str:
        stripped = text.strip()
        return stripped[len(self.TAG):].strip() if stripped.startswith(self.TAG) else stripped

    def parse(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        body = self._body(text)
        if not body.startswith("{"):
            return None
        try:
            return _call_objects(json.loads(body), self.arguments_key, names)
        except json.JSONDecodeError:
            return None

    def parse_cut(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        body = self._body(text)
        if not body.startswith("{"):
            return None
        return [cut] if (cut := _cut_object(body, self.arguments_key, names)) else None

    def may_become_call(self, text: str) -> bool:
        body = text.lstrip()
        return not body or body.startswith(("{", self.TAG)) or self.TAG.startswith(body)

    def grammar(self, functions: list[tuple[str, Any]], *, parallel: bool, optional: bool,
                specials: dict[str, int] | None = None) -> str | None:
        lark = f"start: {'TEXT | ' if optional else ''}call\ncall: {self.call_json(functions)}\n"
        if optional:
            lark += "TEXT: /(.|\\n)*/ & ~/\\s*\\{(.|\\n)*/\n"
        return lark


class Mistral(Convention):
    """Mistral: ``[TOOL_CALLS]`` then a JSON list of calls."""

    name = "mistral"

    def _body(self, text: str) -> str:
        stripped = text.strip()
        return stripped[len(MISTRAL_OPEN):].strip() if stripped.startswith(MISTRAL_OPEN) else stripped

    def parse(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        body = self._body(text)
        if not body.startswith("["):
            return None
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        return _call_objects(value, self.arguments_key, names) if isinstance(value, list) else None

    def parse_cut(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        body = self._body(text)
        if not body.startswith("["):
            return None
        calls: list[ParsedCall] = []
        decoder, at = json.JSONDecoder(), body.index("[") + 1
        while True:  # the complete calls of the list, then the cut one
            rest = body[at:].lstrip(" \n,")
            if not rest.startswith("{"):
                return calls or None
            try:
                value, end = decoder.raw_decode(rest)
            except json.JSONDecodeError:
                cut = _cut_object(rest, self.arguments_key, names)
                return [*calls, cut] if cut else calls or None
            complete = _call_objects(value, self.arguments_key, names)
            if complete is None:
                return None
            calls.extend(complete)
            at = len(body) - len(rest) + end

    def may_become_call(self, text: str) -> bool:
        body = text.lstrip()
        return not body or body.startswith((MISTRAL_OPEN, "[")) or MISTRAL_OPEN.startswith(body)

    def grammar(self, functions: list[tuple[str, Any]], *, parallel: bool, optional: bool,
                specials: dict[str, int] | None = None) -> str | None:
        more = '("," call)*' if parallel else ""
        # Mistral's own tokenizers have [TOOL_CALLS] as a control token: the grammar asks for that token.
        marker = f"<[{specials[MISTRAL_OPEN]}]>" if specials and MISTRAL_OPEN in specials else f'"{MISTRAL_OPEN}"'
        lark = (f"start: {'TEXT | ' if optional else ''}calls\n"
                f'calls: {marker} "[" call {more} "]"\n'
                f"call: {self.call_json(functions)}\n")
        if optional:
            lark += "TEXT: /(.|\\n)*/ & ~/\\s*\\[(.|\\n)*/\n"
        return lark


class Harmony(Convention):
    """gpt-oss's harmony format: messages on channels, the answer on
    ``final``, reasoning on ``analysis``, a call on ``commentary`` addressed
    ``to=functions.NAME`` with its JSON arguments as the message body:
    ``<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}``
    (then ``<|call|>``, an end-of-turn token). The markers are control tokens,
    which the engine keeps in such a model's text."""

    name, parallel = "harmony", False

    def parse(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        channel, recipient, body = _harmony_messages(text)[-1]
        if channel != "commentary" or recipient not in names:
            return None
        try:
            arguments = json.loads(body)
        except json.JSONDecodeError:
            return None
        return [ParsedCall(recipient, json.dumps(arguments))] if isinstance(arguments, dict) else None

    def parse_cut(self, text: str, names: set[str]) -> list[ParsedCall] | None:
        if CHANNEL not in text:
            return None
        channel, recipient, body = _harmony_messages(text)[-1]
        if channel != "commentary" or not recipient:
            return None
        starting = [n for n in names if n.startswith(recipient)]
        return [ParsedCall(starting[0] if len(starting) == 1 else recipient, body.strip())]

    def may_become_call(self, text: str) -> bool:
        return False  # the channels decide (HarmonyStream), not a prefix

    def grammar(self, functions: list[tuple[str, Any]], *, parallel: bool, optional: bool,
                specials: dict[str, int] | None = None) -> str | None:
        if optional:
            return None  # auto: the model may think, answer or call; a call is read when it is well formed
        rules = [f'f{i}: "{name}" " " <|constrain|> "json" <|message|> %json '
                 f'{json.dumps({**parameters, "x-guidance": {"whitespace_flexible": False}})}'
                 for i, (name, parameters) in enumerate(functions)]
        choice = " | ".join(f"f{i}" for i in range(len(functions)))
        return f'start: <|channel|> "commentary to=functions." ({choice})\n' + "\n".join(rules) + "\n"


def _harmony_messages(text: str) -> list[tuple[str, str, str]]:
    """(channel, function recipient, body) of each message of a harmony output."""
    out = []
    for chunk in text.split(START):
        if CHANNEL not in chunk:
            continue
        header, _, body = chunk[chunk.index(CHANNEL) + len(CHANNEL):].partition(MESSAGE)
        channel = header.split(" ", 1)[0].split("<", 1)[0].strip()
        recipient = re.search(r"to=functions\.([A-Za-z0-9_-]*)", chunk.partition(MESSAGE)[0])
        out.append((channel, recipient.group(1) if recipient else "", body.split(END)[0]))
    return out or [("", "", text)]


def harmony_split(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a harmony output: its analysis and final channels."""
    if CHANNEL not in text:
        return None, _unmarked(text)
    messages = _harmony_messages(text)
    thought = "".join(body for channel, _, body in messages if channel == "analysis")
    answer = "".join(body for channel, _, body in messages if channel == "final")
    return (_unmarked(thought) or None), _unmarked(answer)


_CONTROL = re.compile(r"<\|[a-z_]+\|>")


def _unmarked(text: str) -> str:
    """Text without harmony control tokens (a model may write one where it makes no sense)."""
    return _CONTROL.sub("", text)


class HarmonyStream:
    """:class:`ReasoningStream` for harmony output: the analysis channel is
    reasoning, the final channel the answer, commentary (calls) is read at
    the end."""

    def __init__(self) -> None:
        self.buffer, self.channel, self.thought = "", "", False

    def feed(self, piece: str) -> tuple[str, str]:
        thought, answer = self._feed(piece)
        return _unmarked(thought), _unmarked(answer)

    def _feed(self, piece: str) -> tuple[str, str]:
        self.buffer += piece
        thought = answer = ""
        while True:
            if not self.channel:  # between messages: wait for a header to end
                if CHANNEL not in self.buffer or MESSAGE not in self.buffer.split(CHANNEL, 1)[1]:
                    head = self.buffer.lstrip()
                    if CHANNEL in head or head.startswith(START) or CHANNEL.startswith(head) or START.startswith(head):
                        return thought, answer  # a header is still arriving
                    self.channel = "plain"  # no harmony at all: all of it is the answer
                    continue
                header, _, self.buffer = self.buffer.split(CHANNEL, 1)[1].partition(MESSAGE)
                self.channel = header.split(" ", 1)[0].split("<", 1)[0].strip() or "commentary"
                continue
            if self.channel == "plain":
                answer, self.buffer = answer + self.buffer, ""
                return thought, answer
            end = min((i for i in (self.buffer.find(END), self.buffer.find(START)) if i >= 0), default=-1)
            shown = end if end >= 0 else len(self.buffer) - next(
                (n for n in range(min(len(START), len(self.buffer)), 0, -1)
                 if START.startswith(self.buffer[-n:]) or END.startswith(self.buffer[-n:])), 0)
            if self.channel == "analysis":
                thought += self.buffer[:shown]
                self.thought = self.thought or bool(self.buffer[:shown])
            elif self.channel == "final":
                answer += self.buffer[:shown]
            if end < 0:
                self.buffer = self.buffer[shown:]
                return thought, answer
            self.buffer, self.channel = self.buffer[end:].removeprefix(END), ""

    def finish(self) -> tuple[str, str]:
        raw, self.buffer = self.buffer, ""
        rest = _unmarked(raw)
        if self.channel == "analysis":
            return rest, ""
        if self.channel in ("final", "plain") or (not self.channel and CHANNEL not in raw):
            return "", rest  # the answer, or text that only looked like the start of a header
        return "", ""


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (Convention(), Llama3Json(), Mistral(), Harmony())}
CONVENTIONS["none"] = CONVENTIONS["hermes"]
