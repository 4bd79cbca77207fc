"""Grammars that constrain decoding: JSON output and forced tool calls.

openft uses `llguidance <https://github.com/guidance-ai/llguidance>`_ for
constrained decoding. Compared for CPU serving with transformers:

* **llguidance** (chosen): a Rust library with a small Python wheel and no
  torch or compiler at run time; it builds the token mask for a step in
  tens of microseconds on CPU, covers JSON Schema broadly and *names the
  keywords it does not implement* (so an unsupported schema is a clear 400
  instead of a silently looser output), and takes Lark grammars with embedded
  JSON schemas, which forced tool calls need. vLLM, SGLang and llama.cpp use it.
* xgrammar: also fast, but its CPU mask kernel path and schema coverage are
  narrower, and unsupported keywords are not always reported.
* outlines: precompiles an FSM per schema (seconds for larger schemas) and
  pulls a heavy dependency tree.

Grammars are compiled from the request before it is queued, so a bad schema
is refused at once; the engine creates one matcher per sequence from the
grammar text (:class:`Matchers`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from openft import tool_format
from openft.errors import InvalidRequest

if TYPE_CHECKING:
    from openft.ml_types import Tokenizer


def _validated(grammar: str, param: str, what: str) -> str:
    from llguidance import LLMatcher

    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidRequest(f"{what} is not supported for constrained decoding: {problem}", param=param,
                             code="unsupported_schema")
    return grammar


def json_schema_grammar(schema: Any, param: str = "response_format.json_schema.schema") -> str:
    """The grammar of JSON documents valid against ``schema`` (compact
    whitespace, keys in schema order)."""
    from llguidance import LLMatcher

    if not isinstance(schema, dict):
        raise InvalidRequest("The JSON schema must be an object.", param=param)
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except ValueError as exc:
        raise InvalidRequest(f"The JSON schema is invalid: {exc}", param=param) from exc
    return _validated(grammar, param, "This JSON schema")


def json_object_grammar() -> str:
    """Any JSON object (``response_format: {"type": "json_object"}``)."""
    return json_schema_grammar({"type": "object"}, param="response_format")


def _strict(schema: Any) -> Any:
    """A ``strict: true`` function's parameters as OpenAI enforces them:
    objects allow no properties beyond those listed."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def tool_call_grammar(functions: list[dict[str, Any]], param: str = "tool_choice", *,
                      optional: bool = False, parallel: bool = True,
                      convention: tool_format.Convention = tool_format.CONVENTIONS["hermes"],
                      specials: dict[str, int] | None = None) -> str | None:
    """Calls of ``functions`` (each ``{"name", "parameters", "strict"}``) in
    the model's ``convention`` (Hermes ``<tool_call>`` blocks by default),
    arguments valid against the function's parameters schema (``strict``: no
    extra properties). ``optional`` (``tool_choice: "auto"``): the answer may
    instead be text that does not start a call. ``parallel``: one call or
    several, where the convention has several. ``specials``: the model's
    control tokens (text -> id), for markers that are one. None where the
    convention holds no grammar (harmony's ``auto``)."""
    from llguidance import LLMatcher

    schemas = [(f["name"], _strict(f.get("parameters") or {"type": "object"}) if f.get("strict")
                else f.get("parameters") or {"type": "object"}) for f in functions]
    lark = convention.grammar(schemas, parallel=parallel and convention.parallel, optional=optional,
                              specials=specials)
    if lark is None:
        return None
    return _validated(LLMatcher.grammar_from_lark(lark), param, "A function's parameters schema")


class Matchers:
    """Matchers for one tokenizer; the llguidance view of the tokenizer is
    built once (about a second) on first use."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._ll: Any = None
        self._lock = threading.Lock()

    def new(self, grammar: str) -> Any:
        from llguidance import LLMatcher

        with self._lock:
            if self._ll is None:
                import llguidance.hf

                self._ll = llguidance.hf.from_tokenizer(self._tokenizer)
        matcher = LLMatcher(self._ll, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"The grammar could not be used: {matcher.get_error()}", param="response_format")
        return matcher
