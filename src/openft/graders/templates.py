"""Grader templates: ``{{item.key}}``, ``{{sample.output_text}}``,
``{{sample.output_json.a.b}}`` and other dotted paths (list elements by
index: ``{{item.answers.0}}``).

Two namespaces exist: ``item`` (the training line without its ``messages``
and ``tools``, or the ``item`` of a run-grader request) and ``sample`` (the
model's answer: ``output_text``, ``output_json`` when the text is a JSON
value, ``output_tools`` for tool calls). Strings are inserted as they are;
other values as compact JSON. A path that does not exist is a
:class:`TemplateError` (OpenAI's ``invalid_variable_error``).
"""

from __future__ import annotations

import json
import re
from typing import Any

NAMESPACES = ("item", "sample")
_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")


class TemplateError(Exception):
    """A variable names nothing in its namespace."""


def variables(template: str) -> list[str]:
    """The dotted paths a template refers to, in order."""
    return [match.group(1) for match in _VARIABLE.finditer(template)]


def check(template: str, namespaces: tuple[str, ...] = NAMESPACES) -> str | None:
    """None when every variable is a well-formed path in one of
    ``namespaces``, otherwise what is wrong (for a 400 at validation time)."""
    for path in variables(template):
        if not _PATH.fullmatch(path):
            return f"'{{{{{path}}}}}' is not a variable path such as item.answer or sample.output_text"
        if path.split(".")[0] not in namespaces:
            return (f"'{{{{{path}}}}}' is outside the template namespaces "
                    f"({', '.join(namespaces)})")
    return None


def lookup(path: str, context: dict[str, Any]) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"'{{{{{path}}}}}' does not exist in this item or sample")
    return value


def render(template: str, context: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        found = lookup(match.group(1), context)
        return found if isinstance(found, str) else json.dumps(found, separators=(",", ":"))

    return _VARIABLE.sub(value, template)


def render_messages(messages: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, str]]:
    """Eval messages (checked by ``spec.check_messages``) rendered into chat
    messages: ``developer`` as ``system``, the text parts of a message joined
    by newlines."""
    rendered = []
    for message in messages:
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        text = "\n".join(render(p if isinstance(p, str) else p["text"], context) for p in parts)
        role = "system" if message["role"] == "developer" else message["role"]
        rendered.append({"role": role, "content": text})
    return rendered


def sample_namespace(output_text: str, output_tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``sample`` namespace of one model answer."""
    try:
        output_json = json.loads(output_text)
    except (ValueError, RecursionError):
        output_json = None
    return {"output_text": output_text, "output_json": output_json, "output_tools": output_tools or []}
