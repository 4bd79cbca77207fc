"""Chat completions: which weights a model id names, and the answer built
around the serving generator, as one JSON object or a server-sent stream.

:class:`ChatService` is the stateful handler of the endpoint family (as in
vLLM's ``OpenAIServingChat``): the router only hands it the request. It owns

* resolution: a base, fine-tuned (``ft:...``) or checkpoint model id of the
  caller's organisation becomes a :class:`ModelRef` through the one model
  resolver (``ModelRegistry.resolve``, which exports and graders' judges use
  too);
* the generator, created on the first request (importing torch then, not
  when the API starts), whose per-base engines batch every request;
* the request's :class:`Plan`: prompt tokens (tools rendered in the model's
  tool format), the grammar of ``response_format`` or a forced
  ``tool_choice``, logprobs; every problem with them is a 400 before the
  request is queued;
* the hand-over from the engine's thread: events go through a
  :class:`Submission` (``call_soon_threadsafe`` into an asyncio queue), so
  the event loop never blocks on generation;
* work nobody waits for: every generation has a :class:`StopSignal` that a
  disconnect (polled for plain requests, noticed when the response ends for
  streams) or ``OPENFT_GENERATION_TIMEOUT_SECONDS`` trips; the engine drops
  the request's rows at its next step;
* the wire format: a role chunk, content chunks (with logprobs), tool-call
  deltas, a finish chunk, an optional usage chunk and ``data: [DONE]``, also
  after an error (sent as an error event in the OpenAI envelope, without
  internals); tool calls parsed out of the answer with
  :mod:`openft.tool_format`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
from jinja2 import TemplateError

from openft import tool_format
from openft.config import Settings
from openft.errors import InvalidRequest, OpenFTError, error_body
from openft.schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    FunctionCallOut,
    NamedToolChoice,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprobOut,
    Usage,
)
from openft.services.models import ModelRegistry
from openft.serving.types import (
    Completion,
    Completions,
    Failed,
    Finished,
    GenerationParams,
    ModelRef,
    StopSignal,
    TokenEvent,
    TokenLogprob,
)
from openft.store.queries.reads import Db

if TYPE_CHECKING:
    from openft.serving.generator import Generator

log = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.25
"""How often a plain (non-streamed) request checks that its client is still there."""


class ChatStream:
    """A started stream: its server-sent events, and the signal that ends its
    generation (the router trips it when the response ends, however it ends)."""

    def __init__(self, events: AsyncIterator[str], stop: StopSignal):
        self.events, self.stop = events, stop


class Submission:
    """A request's events, handed from the engine's thread to the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TokenEvent | Finished | Failed] = asyncio.Queue()

    def put(self, event: TokenEvent | Finished | Failed) -> None:  # engine thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> TokenEvent | Finished | Failed:
        return await self._queue.get()


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


class ChatService:
    def __init__(self, settings: Settings, registry: ModelRegistry):
        self.settings, self.registry = settings, registry
        self._generator: Generator | None = None
        self._generator_lock = threading.Lock()
        self._refusals: dict[str, str | None] = {}  # base folder -> why it cannot be served

    @property
    def generator(self) -> Generator:
        with self._generator_lock:
            if self._generator is None:
                from openft.serving.generator import Generator

                self._generator = Generator(
                    self.settings.serving_memory_mb * 2**20, self.settings.device,
                    max_batch=self.settings.serving_max_batch, max_queue=self.settings.serving_max_queue,
                )
            return self._generator

    def stats(self) -> dict[str, dict[str, int]]:
        """Per loaded base: engine counters plus ``running``/``waiting`` now."""
        if self._generator is None:
            return {}
        return self._generator.stats()

    async def create(
        self,
        reader: Callable[[], AbstractAsyncContextManager[Db]],
        org_id: str,
        body: ChatCompletionRequest,
        is_disconnected: Callable[[], Awaitable[bool]],
    ) -> ChatCompletion | ChatStream:
        params = body.to_generation_params()
        if body.stream and params.n > 1:
            raise InvalidRequest("Streaming supports n=1 only.", param="n")
        async with reader() as db:
            ref = await self.registry.resolve(db, org_id, body.model)
        refusal = await anyio.to_thread.run_sync(self.serving_refusal, ref)
        if refusal:
            raise InvalidRequest(f"The model {body.model!r} cannot be served: {refusal}.", param="model",
                                 code="model_not_servable")
        plan = await anyio.to_thread.run_sync(self.plan, ref, body)
        params = fit_context(params, len(plan.prompt), plan.context,
                             explicit=(body.max_completion_tokens or body.max_tokens) is not None)
        stop = StopSignal(self.settings.generation_timeout_seconds)
        submission = Submission()
        await anyio.to_thread.run_sync(lambda: self.generator.submit(
            ref, plan.prompt, params, stop, submission.put, grammar=plan.grammar, logprobs=plan.logprobs))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return ChatStream(self.events(submission, plan, body.model, include_usage, stop), stop)
        completions = await _until_disconnected(collect(submission, params.n), stop, is_disconnected)
        return completion_object(body.model, len(plan.prompt), completions, plan)

    def serving_refusal(self, ref: ModelRef) -> str | None:
        """Why the model's architecture cannot be served (``ModelRegistry.describe``), or None."""
        key = str(ref.base_path)
        if key not in self._refusals:
            found = self.registry.describe(ref.id, ref.base_path)
            self._refusals[key] = found.refusals.get("serving") if found else None
        return self._refusals[key]

    def plan(self, ref: ModelRef, body: ChatCompletionRequest) -> Plan:
        """The request's :class:`Plan` on this service's generator (:func:`plan_request`)."""
        return plan_request(self.generator, ref, body)

    async def events(
        self, submission: Submission, plan: Plan, model: str, include_usage: bool, stop: StopSignal,
    ) -> AsyncIterator[str]:
        """The stream of one choice. With tools, text that may still become a
        tool call is held back; a finished call goes out as ``tool_calls``
        deltas with ``finish_reason: "tool_calls"``."""
        completion_id, created = new_completion_id(), int(time.time())

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True,
                  logprobs: list[TokenLogprob] | None = None) -> str:
            wire_logprobs = ChoiceLogprobs(content=[_wire_logprob(lp) for lp in logprobs]) if logprobs else None
            body = ChatCompletionChunk(
                id=completion_id, created=created, model=model, usage=usage,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish,  # type: ignore[arg-type]
                                     logprobs=wire_logprobs)] if choices else [],
            )
            return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

        held, pending = "", []  # text that may become a tool call; logprobs not yet sent
        harmony = plan.convention.name == "harmony"  # channels, not a prefix, tell a call from an answer
        deciding = bool(plan.tool_names) and not harmony
        thoughts = tool_format.reasoning_stream(plan.reasoning, opened=plan.thinking_opened)
        try:
            yield chunk(Delta(role="assistant", content=""))
            while True:
                event = await submission.get()
                if isinstance(event, Failed):
                    raise event.error
                piece = event.text if isinstance(event, TokenEvent) else ""
                if isinstance(event, TokenEvent) and event.logprob is not None:
                    pending.append(event.logprob)
                if thoughts is not None:
                    thought, piece = thoughts.feed(piece) if isinstance(event, TokenEvent) else thoughts.finish()
                    if thought:
                        yield chunk(Delta(reasoning_content=thought), logprobs=pending)
                        pending = []
                if isinstance(event, TokenEvent):
                    if deciding:
                        held += piece
                        if plan.convention.may_become_call(held):
                            continue
                        deciding, text = False, held
                    else:
                        text = piece
                    if text:
                        yield chunk(Delta(content=text), logprobs=pending)
                        pending = []
                    continue
                if deciding:  # the answer held back at its end (reasoning models)
                    held += piece
                elif piece:
                    yield chunk(Delta(content=piece), logprobs=pending)
                    pending = []
                finish = event.finish_reason
                calls, finish = answer_calls(event.text if harmony else held, finish, plan) \
                    if deciding or (harmony and plan.tool_names) else (None, finish)
                if calls:
                    for index, call in enumerate(calls):
                        yield chunk(Delta(tool_calls=[ToolCallDelta(
                            index=index, id=new_call_id(), type="function",
                            function=FunctionCallDelta(name=call.name, arguments=call.arguments))]),
                            logprobs=pending if index == 0 else None)
                    pending = []
                elif deciding and held and calls is None:
                    yield chunk(Delta(content=held), logprobs=pending)
                    pending = []
                yield chunk(Delta(), finish=finish, logprobs=pending or None)
                if include_usage:
                    prompt_tokens = len(plan.prompt)
                    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=event.completion_tokens,
                                  total_tokens=prompt_tokens + event.completion_tokens)
                    yield chunk(Delta(), usage=usage, choices=False)
                break
        except Exception as exc:
            log.exception("chat stream failed")
            error = exc if isinstance(exc, OpenFTError) else OpenFTError("Generation failed.")
            payload = error_body(error.message, type="server_error", param=error.param, code=error.code)
            yield f"data: {json.dumps(payload)}\n\n"
        finally:
            stop.cancel()  # no-op after a finished generation; frees the slot of one nobody reads any more
        yield "data: [DONE]\n\n"


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


async def collect(submission: Submission, n: int) -> list[Completion]:
    completions = Completions(n)
    while not completions.add(await submission.get()):
        pass
    return completions.result()


async def _until_disconnected(
    work: Awaitable[list[Completion]], stop: StopSignal, is_disconnected: Callable[[], Awaitable[bool]]
) -> list[Completion]:
    """Await ``work``; if the client goes away meanwhile, trip ``stop`` (the
    engine then drops the request's rows at its next step)."""
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while not stop.should_stop():
                if await is_disconnected():
                    log.info("chat: client disconnected; generation stopped")
                    stop.cancel()
                    return
                await anyio.sleep(DISCONNECT_POLL_SECONDS)

        group.start_soon(watch)
        try:
            return await work
        finally:
            group.cancel_scope.cancel()


def _wire_logprob(lp: TokenLogprob) -> TokenLogprobOut:
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
        logprobs = ChoiceLogprobs(content=[_wire_logprob(lp) for lp in c.logprobs or []]) if plan and \
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
