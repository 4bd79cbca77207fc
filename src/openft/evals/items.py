"""A run's items: read from the run's data source, checked against the
eval's ``item_schema`` (a 400 naming the item's line), and, for a
``completions`` run, the messages each item is sampled with.

Items are numbered from 0 in their source's order (``datasource_item_id``).
They are checked and rendered once, when the run is created, and stored with
the run (:meth:`RunItem.to_dict`, one JSON line each), so the run's process
only samples and grades, and a later change to the source file changes
nothing.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from openft.errors import InvalidRequest
from openft.graders import spec
from openft.graders.templates import TemplateError, lookup, render_messages
from openft.text import first_bad_path, storable

MAX_ITEMS = 50_000
"""Most items one run may have."""
MAX_SOURCE_BYTES = 64 << 20
"""Largest file of items a run reads (an uploaded file may be larger: it is refused here)."""
MAX_ITEM_BYTES = 256 << 10
"""Largest row (its JSON), and largest rendered input of one item."""
MAX_ITEMS_BYTES = 256 << 20
"""Largest total of the rendered items one run stores."""
PATTERN_SECONDS = 0.1
"""Longest one ``pattern`` of an item schema may take on one value (a backtracking regex is refused, not waited for)."""


@dataclass(frozen=True)
class RunItem:
    index: int
    item: dict[str, Any]
    sample: dict[str, Any] | None = None
    """A jsonl row's own ``sample`` (what the criteria grade when no model is sampled)."""
    messages: list[dict[str, str]] | None = None
    """A completions run: the chat messages this item is sampled with."""

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "item": self.item, "sample": self.sample, "messages": self.messages}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunItem:
        return cls(int(data["index"]), data["item"], data.get("sample"), data.get("messages"))


@dataclass(frozen=True)
class SourceRow:
    """One row of a source: where it is (for errors) and what it holds."""

    where: str
    """``line 4 of file-abc`` or ``data_source.source.content.3``."""
    param: str
    """The request field a mistake in this row points at."""
    value: Any


def inline_rows(content: Any, param: str) -> list[SourceRow]:
    if not isinstance(content, list) or not content:
        raise spec.invalid(param, "must be a non-empty list of {'item': {...}} objects", code="invalid_value")
    return [SourceRow(f"{param}.{i}", f"{param}.{i}", row) for i, row in enumerate(content)]


def file_rows(data: bytes, file_id: str, param: str) -> list[SourceRow]:
    """The JSON lines of an uploaded file (blank lines skipped)."""
    if len(data) > MAX_SOURCE_BYTES:
        raise InvalidRequest(f"Invalid '{param}': the file {file_id} is larger than a run reads "
                             f"({MAX_SOURCE_BYTES >> 20} MiB); split it into several runs.", param=param,
                             code="file_too_large")
    lines = data.splitlines()
    if sum(1 for line in lines if line.strip()) > MAX_ITEMS:
        raise InvalidRequest(f"Invalid '{param}': a run may have at most {MAX_ITEMS} items.", param=param,
                             code="too_many_items")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number} of {file_id}"
        if len(line) > MAX_ITEM_BYTES:
            raise InvalidRequest(f"Invalid '{param}': {where} is larger than {MAX_ITEM_BYTES >> 10} KiB.",
                                 param=param, code="invalid_file")
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InvalidRequest(f"Invalid '{param}': {where} is not valid JSON ({exc}).", param=param,
                                 code="invalid_file") from None
        rows.append(SourceRow(where, param, value))
    if not rows:
        raise InvalidRequest(f"Invalid '{param}': the file {file_id} holds no items.", param=param,
                             code="invalid_file")
    return rows


def _refuse(row: SourceRow, message: str, field: str = "") -> InvalidRequest:
    param = row.param + (f".{field}" if field and row.where == row.param else "")  # inline: the field; a file: its id
    return InvalidRequest(f"Invalid item at {row.where}: {message}.", param=param, code="invalid_item")


def check_rows(rows: list[SourceRow], item_schema: dict[str, Any], *, needs_sample: bool,
               input_messages: dict[str, Any] | None) -> list[RunItem]:
    """Every row as a :class:`RunItem`: an object with an ``item`` that fits
    ``item_schema`` (and a ``sample`` object where the criteria grade one
    that no model samples), rendered into messages for a completions run.
    Blocking and CPU-bound: callers run it off the event loop."""
    if len(rows) > MAX_ITEMS:
        raise InvalidRequest(f"A run may have at most {MAX_ITEMS} items; this source has {len(rows)}.",
                             param=rows[0].param, code="too_many_items")
    validator = item_validator(item_schema)
    items, total = [], 0
    for index, row in enumerate(rows):
        value = row.value
        if not isinstance(value, dict) or not isinstance(value.get("item"), dict):
            raise _refuse(row, "each item must be an object {\"item\": {...}}, with an optional \"sample\"")
        if unknown := sorted(set(value) - {"item", "sample"}):
            raise _refuse(row, f"{unknown[0]!r} is not a field of an item row (item, sample)", unknown[0])
        if (where := first_bad_path(value, storable)) is not None:
            raise _refuse(row, f"{where} holds a NUL character or a lone surrogate, which no stored text may hold",
                          where)
        if input_messages is not None and "sample" in value:
            raise _refuse(row, "a completions run samples its model, so its items carry no 'sample'; remove it, "
                          "or grade the samples with a 'jsonl' run", "sample")
        try:
            errors = sorted(validator.iter_errors(value["item"]), key=lambda e: list(e.path))
        except Exception as exc:  # an unresolvable $ref, say: the schema cannot be applied
            raise _refuse(row, f"the eval's item_schema cannot be applied to it: {exc}", "item") from None
        error = next(iter(errors), None)
        if error is not None:
            at = ".".join(str(p) for p in error.path)
            raise _refuse(row, f"the item does not fit the eval's item_schema"
                          f"{' at ' + at if at else ''}: {error.message}", "item")
        sample = value.get("sample")
        if sample is not None and not isinstance(sample, dict):
            raise _refuse(row, "'sample' must be an object such as {\"output_text\": \"...\"}", "sample")
        if input_messages is None and needs_sample and not isinstance((sample or {}).get("output_text"), str):
            raise _refuse(row, "a jsonl run grades the samples its items carry, and this one has no "
                          "sample.output_text; add one, or run the eval with a 'completions' data source "
                          "that samples a model", "sample")
        messages = None
        if input_messages is not None:
            messages = _messages(input_messages, value["item"], row)
            size = sum(len(m["content"]) for m in messages)
            if size > MAX_ITEM_BYTES:
                raise _refuse(row, f"its input messages come to {size} characters, more than "
                              f"{MAX_ITEM_BYTES >> 10} K", "item")
            total += size
        total += len(json.dumps(value, separators=(",", ":")))
        if total > MAX_ITEMS_BYTES:
            raise _refuse(row, f"the run's items come to more than {MAX_ITEMS_BYTES >> 20} MiB; split them into "
                          "several runs")
        items.append(RunItem(index, value["item"], sample, messages))
    return items


def item_validator(schema: dict[str, Any]) -> Any:
    """A JSON Schema validator of ``schema`` whose ``pattern`` and
    ``patternProperties`` run with a time limit (the ``regex`` module's
    ``timeout``): a catastrophically backtracking pattern fails the item
    instead of holding a thread for minutes."""
    return _validator_class()(schema)


@functools.cache
def _validator_class() -> Any:
    import regex
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError

    def search(pattern: str, text: str) -> bool:
        try:
            return regex.search(pattern, text, timeout=PATTERN_SECONDS) is not None
        except TimeoutError:
            raise ValidationError(f"the pattern {pattern!r} takes too long on this value") from None

    def pattern(validator: Any, expression: str, instance: Any, schema: Any) -> Any:
        try:
            if validator.is_type(instance, "string") and not search(expression, instance):
                yield ValidationError(f"{instance!r} does not match {expression!r}")
        except ValidationError as exc:
            yield exc

    def pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        for expression, subschema in patterns.items():
            for key, value in instance.items():
                try:
                    found = search(expression, key)
                except ValidationError as exc:
                    yield exc
                    continue
                if found:
                    yield from validator.descend(value, subschema, path=key, schema_path=expression)

    return validators.extend(Draft202012Validator, {"pattern": pattern, "patternProperties": pattern_properties})


def check_input_messages(input_messages: Any, param: str) -> dict[str, Any]:
    """A completions run's ``input_messages``: a ``template`` of eval messages
    over ``{{item.*}}``, or an ``item_reference`` to a list of messages in each item."""
    if not isinstance(input_messages, dict):
        raise spec.invalid(param, "must be an object with a 'type' (template or item_reference)",
                           code="invalid_value")
    kind = input_messages.get("type")
    if kind == "template":
        if unknown := sorted(set(input_messages) - {"type", "template"}):
            raise spec.invalid(f"{param}.{unknown[0]}", "is not a field of a template", code="invalid_value")
        spec.check_messages(input_messages.get("template"), f"{param}.template", namespaces=("item",))
    elif kind == "item_reference":
        reference = input_messages.get("item_reference")
        if not isinstance(reference, str) or not reference.strip("{} ").startswith("item."):
            raise spec.invalid(f"{param}.item_reference", "must name a list of messages in each item, "
                               "such as 'item.messages'", code="invalid_value")
    else:
        raise spec.invalid(f"{param}.type", f"must be 'template' or 'item_reference', got {kind!r}",
                           code="invalid_value")
    return input_messages


def echoed(input_messages: dict[str, Any]) -> dict[str, Any]:
    """``input_messages`` as OpenAI echoes a run's template: each message an
    ``EvalItem`` (``{"type": "message", "role", "content": {"type": "input_text", "text"}}``),
    the one form that reads as a single schema of the spec's ``oneOf``."""
    if input_messages["type"] != "template":
        return input_messages
    template = []
    for message in input_messages["template"]:
        content = message["content"]
        if isinstance(content, str):
            content = {"type": "output_text" if message["role"] == "assistant" else "input_text", "text": content}
        template.append({"type": "message", "role": message["role"], "content": content})
    return {"type": "template", "template": template}


def _messages(input_messages: dict[str, Any], item: dict[str, Any], row: SourceRow) -> list[dict[str, str]]:
    context = {"item": item}
    if input_messages["type"] == "template":
        try:
            return render_messages(input_messages["template"], context)
        except TemplateError as exc:
            raise _refuse(row, f"the input_messages template cannot be filled in: {exc}", "item") from None
    path = input_messages["item_reference"].strip("{} ")
    try:
        found = lookup(path, context)
    except TemplateError:
        raise _refuse(row, f"it has no {path} (the input_messages item_reference)", "item") from None
    try:
        spec.check_messages(found, path, namespaces=())
    except InvalidRequest as exc:
        raise _refuse(row, f"{path} is not a list of messages: {exc.message}", "item") from None
    return render_messages(found, {})
