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
* the request's :class:`~openft.serving.chat_plan.Plan` (planned by
  ``serving.chat_plan``, which eval runs share): prompt tokens (tools
  rendered in the model's tool format), the grammar of ``response_format``
  or a forced ``tool_choice``, logprobs; every problem with them is a 400
  before the request is queued;
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
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import anyio

from openft import tool_format
from openft.config import Settings
from openft.errors import InvalidRequest, OpenFTError, error_body
from openft.schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ToolCallDelta,
    Usage,
)
from openft.services.models import ModelRegistry
from openft.serving.chat_plan import (
    Plan,
    answer_calls,
    completion_object,
    fit_context,
    new_call_id,
    new_completion_id,
    plan_request,
    wire_logprob,
)
from openft.serving.types import (
    Completion,
    Completions,
    Failed,
    Finished,
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
                    dtype=self.settings.serving_dtype, max_cache_bytes=self.settings.serving_kv_cache_mb * 2**20,
                    prefix_cache_bytes=self.settings.serving_prefix_cache_mb * 2**20,
                    prefill_chunk=self.settings.serving_prefill_chunk, max_adapters=self.settings.serving_max_adapters,
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
            ref, plan.prompt, params, stop, submission.put, grammar=plan.grammar, logprobs=plan.logprobs,
            cache_scope=org_id))
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
            wire_logprobs = ChoiceLogprobs(content=[wire_logprob(lp) for lp in logprobs]) if logprobs else None
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


