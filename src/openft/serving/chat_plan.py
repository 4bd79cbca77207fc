"""A chat request planned for the serving generator, and its answer read
back as OpenAI's chat completion: the one implementation chat completions
(``services.chat``) and eval runs (``openft.evals.run``, in a process of
their own) share.

* :func:`plan_request`: prompt tokens (tools rendered in the model's tool
  format, reasoning switches), the grammar of ``response_format`` or a
  forced ``tool_choice``, logprobs; every problem with them is an
  :class:`~openft.errors.InvalidRequest` before anything is queued;
* :func:`fit_context`: the completion budget within the model's context;
* :func:`completion_object`: finished generations as a ``ChatCompletion``
  (reasoning split out, tool calls parsed, cut calls returned as calls).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from openft import tool_format
from openft.errors import InvalidRequest
from openft.schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    FunctionCallOut,
    NamedToolChoice,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
    Usage,
)
from openft.serving.types import Completion, GenerationParams, ModelRef, TokenLogprob

if TYPE_CHECKING:
    from openft.serving.generator import Generator


@dataclass
class Plan:
    """What a request asks of the generator, worked out before it is queued."""

    prompt: list[int]
    grammar: str | None
    logprobs: int | None
    tool_names: set[str]  # functions the answer may call; empty: tool calls are not parsed
    context: int  # the model's context length, prompt and completion together
    convention: tool_format.Convention = tool_format.CONVENTIONS["hermes"]  # how the model writes calls
    reasoning: str = "none"  # how a thinking model shows reasoning (tool_format.reasoning_style): reasoning_content
    thinking_opened: bool = False  # the prompt itself opened the <think> block


def fit_context(params: GenerationParams, prompt_tokens: int, context: int, *, explicit: bool) -> GenerationParams:
    """The request's completion budget within the model's context: a prompt
    that leaves no room, or an explicit ``max_tokens`` that does not fit, is a
    400 ``context_length_exceeded`` (as OpenAI answers); the default budget
    shrinks to the room left."""
    room = context - prompt_tokens
    if room < 1 or (explicit and params.max_new_tokens > room):
        wanted = prompt_tokens + (params.max_new_tokens if explicit else 1)
        raise InvalidRequest(
            f"This model's maximum context length is {context} tokens. However, you requested {wanted} "
            f"tokens ({prompt_tokens} in the messages, {wanted - prompt_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages", code="context_length_exceeded")
    return params if params.max_new_tokens <= room else replace(params, max_new_tokens=room)




def plan_request(generator: Generator, ref: ModelRef, body: ChatCompletionRequest) -> Plan:
    """Prompt tokens, grammar and tool set of a request; every problem
    with them is a 400 here, before anything is queued (blocking: it may
    load the model)."""
    from openft.serving import constraints

    tools = body.tool_dicts() if body.tools and body.tool_choice != "none" else None
    template = generator.chat_template(ref) or ""
    thinking = tool_format.reasoning_style(template) != "none"
    switches: dict[str, Any] = {}
    if body.reasoning_effort not in (None, "none"):
        if "reasoning_effort" not in template or body.reasoning_effort == "minimal":  # gpt-oss: low, medium, high
            raise InvalidRequest(
                f"reasoning_effort {body.reasoning_effort!r} is not supported by the model {ref.id!r}: its chat "
                "template has no effort levels. Leave it out, or use 'none' to turn thinking off where the "
                "model can.", param="reasoning_effort", code="unsupported_value")
        switches["reasoning_effort"] = body.reasoning_effort
    if body.reasoning_effort == "none" and thinking:
        if "enable_thinking" not in template:
            raise InvalidRequest(f"The model {ref.id!r} cannot turn its thinking off: its chat template has no "
                                 "enable_thinking switch.", param="reasoning_effort", code="unsupported_value")
        switches, thinking = {"enable_thinking": False}, False
    try:
        prompt = generator.prompt_ids(ref, body.plain_messages(), tools, **switches)
    except tool_format.ReasoningFormatError as exc:
        raise InvalidRequest(f"The model {ref.id!r} does not take reasoning_content: {exc}.", param="messages",
                             code="reasoning_not_supported") from exc
    except tool_format.ToolFormatError as exc:
        raise InvalidRequest(f"The model {ref.id!r} does not support tool calls: {exc}.",
                             param="tools" if body.tools else "messages", code="tools_not_supported") from exc
    except TemplateError as exc:  # the model's own template refused the conversation (raise_exception)
        raise InvalidRequest(f"The chat template of the model {ref.id!r} refused these messages: {exc}",
                             param="messages", code="invalid_messages") from exc
    grammar, convention, specials = None, generator.convention(ref), generator.special_tokens(ref)
    if tools:  # calls always parse and match their function's parameters schema
        functions = [t["function"] for t in tools]
        parallel = body.parallel_tool_calls is not False
        if isinstance(body.tool_choice, NamedToolChoice):
            named = [f for f in functions if f["name"] == body.tool_choice.function.name]
            grammar = constraints.tool_call_grammar(named, "tool_choice.function.name", parallel=False,
                                                   convention=convention, specials=specials)
        elif body.tool_choice == "required":  # exactly one call
            grammar = constraints.tool_call_grammar(functions, "tools", parallel=False, convention=convention,
                                                   specials=specials)
        else:
            grammar = constraints.tool_call_grammar(functions, "tools", parallel=parallel, optional=True,
                                                   convention=convention, specials=specials)
    format_ = body.response_format
    if format_ is not None and format_.type == "json_object":
        grammar = constraints.json_object_grammar()
    elif format_ is not None and format_.type == "json_schema":
        assert format_.json_schema is not None
        grammar = constraints.json_schema_grammar(format_.json_schema.schema_)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    names = {t["function"]["name"] for t in tools} if tools else set()
    if tools and isinstance(body.tool_choice, NamedToolChoice):  # the grammar allows that one only
        names = {body.tool_choice.function.name}
    style = tool_format.reasoning_style(template) if thinking else "none"
    opened = thinking and generator.opens_thinking(ref, prompt)
    if grammar is not None and opened:  # the grammar holds the answer from its first token: no thinking
        style, opened = "none", False
    return Plan(prompt, grammar, logprobs, names, generator.context_length(ref), convention, style, opened)




def wire_logprob(lp: TokenLogprob) -> TokenLogprobOut:
    return TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=lp.bytes, top_logprobs=[
        TopLogprobOut(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top_logprobs])


def completion_object(model: str, prompt_tokens: int, completions: list[Completion], plan: Plan | None = None
                      ) -> ChatCompletion:
    completion_tokens = sum(c.completion_tokens for c in completions)
    choices = []
    for i, c in enumerate(completions):
        thought, text = tool_format.split_answer(c.text, plan.reasoning, opened=plan.thinking_opened) if plan \
            else (None, c.text)
        harmony = plan is not None and plan.convention.name == "harmony"
        calls, finish = answer_calls(c.text if harmony else text, c.finish_reason, plan) if plan and plan.tool_names \
            else (None, c.finish_reason)
        logprobs = ChoiceLogprobs(content=[wire_logprob(lp) for lp in c.logprobs or []]) if plan and \
            plan.logprobs is not None else None
        if calls:
            message = AssistantMessage(content=None, reasoning_content=thought, tool_calls=[
                ToolCallOut(id=new_call_id(), function=FunctionCallOut(name=call.name, arguments=call.arguments))
                for call in calls])
            choices.append(Choice(index=i, message=message, finish_reason=finish,  # type: ignore[arg-type]
                                  logprobs=logprobs))
        else:  # calls == []: a call cut before its name; its markup is not content
            choices.append(Choice(index=i, message=AssistantMessage(
                content=None if calls == [] else text, reasoning_content=thought),
                                  finish_reason=c.finish_reason, logprobs=logprobs))  # type: ignore[arg-type]
    return ChatCompletion(
        id=new_completion_id(),
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


def answer_calls(text: str, finish: str, plan: Plan) -> tuple[list[tool_format.ParsedCall] | None, str]:
    """(the answer's tool calls or None, its finish reason): complete calls
    finish with ``tool_calls``; calls cut by ``max_tokens`` still come back as
    calls, with their unfinished arguments and ``length`` (as OpenAI answers),
    so call markup never reaches ``content``; an empty list is a call cut
    before its name was written (no call to return, no content either)."""
    calls = plan.convention.parse(text, plan.tool_names)
    if calls:
        return calls, "tool_calls"
    if finish == "length":
        cut = plan.convention.parse_cut(text, plan.tool_names)
        return (None if cut is None else [c for c in cut if c.name in plan.tool_names]), finish
    return None, finish


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)
