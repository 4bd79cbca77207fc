"""Chat completions: which weights a model id names, and the answer built
around the serving generator, as one JSON object or a server-sent stream.

:class:`ChatService` is the stateful handler of the endpoint family (as in
vLLM's ``OpenAIServingChat``): the router only hands it the request. It owns

* resolution: a base, fine-tuned (``ft:...``) or checkpoint model id of the
  caller's organisation becomes a :class:`ModelRef` through the one model
  resolver (``ModelRegistry.weights``); fine-tuned weights are fetched from
  blob storage once into ``$OPENFT_HOME/cache``;
* the generator, created on the first request (importing torch then, not
  when the API starts);
* work nobody waits for: every generation has a :class:`StopSignal` that a
  disconnect (polled for plain requests, noticed at the next chunk for
  streams) or ``OPENFT_GENERATION_TIMEOUT_SECONDS`` trips;
* the stream's wire format: a role chunk, content chunks, a finish chunk,
  an optional usage chunk and ``data: [DONE]``, also after an error (sent as
  an error event in the OpenAI envelope, without internals).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from openft.config import Settings
from openft.errors import InvalidRequest, NotFound, OpenFTError, error_body
from openft.schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from openft.services.models import ModelRegistry
from openft.serving.types import Completion, GenerationParams, ModelRef, StopSignal
from openft.store.blobs import BlobStore
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as model_queries
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


class ChatService:
    def __init__(self, settings: Settings, registry: ModelRegistry, blobs: BlobStore):
        self.settings, self.registry, self.blobs = settings, registry, blobs
        self._generator: Generator | None = None
        self._generator_lock = threading.Lock()

    @property
    def generator(self) -> Generator:
        with self._generator_lock:
            if self._generator is None:
                from openft.serving.generator import Generator

                self._generator = Generator(self.settings.serving_memory_mb * 2**20, self.settings.device)
            return self._generator

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
            ref = await self.resolve(db, org_id, body.model)
        prompt = await anyio.to_thread.run_sync(self.generator.prompt_ids, ref, body.plain_messages())
        stop = StopSignal(self.settings.generation_timeout_seconds)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return ChatStream(self.events(ref, prompt, params, body.model, include_usage, stop), stop)
        completions = await _until_disconnected(
            lambda: self.generator.generate(ref, prompt, params, stop), stop, is_disconnected
        )
        return completion_object(body.model, len(prompt), completions)

    async def resolve(self, db: Db, org_id: str, model_id: str) -> ModelRef:
        tuned = await model_queries.read_fine_tuned_model(db, org_id, model_id)
        checkpoint = None if tuned else await job_queries.read_checkpoint_model(db, org_id, model_id)
        if tuned is None and checkpoint is None:
            return ModelRef(model_id, await self._base_path(db, model_id, model_id, known_base=False))
        storage_key, base_model = (tuned.storage_key, tuned.base_model) if tuned else checkpoint
        folder = await anyio.to_thread.run_sync(self._local_copy, storage_key)
        if not (folder / "adapter_config.json").exists():  # a full fine-tune
            return ModelRef(model_id, folder)
        return ModelRef(model_id, await self._base_path(db, base_model, model_id, known_base=True), folder)

    async def _base_path(self, db: Db, base: str, asked: str, *, known_base: bool) -> Path:
        weights = await self.registry.weights(db, base, known_base=known_base)
        if weights is None:
            raise NotFound("model", asked, param="model")
        return await anyio.to_thread.run_sync(weights.local_path, self.settings.models_dir)

    def _local_copy(self, key: str) -> Path:
        if (local := self.blobs.local_path(key)) is not None:
            return local
        target = self.settings.home / "cache" / key
        if not (target / ".complete").exists():
            target.mkdir(parents=True, exist_ok=True)
            self.blobs.get_dir(key, str(target))
            (target / ".complete").touch()
        return target

    async def events(
        self, ref: ModelRef, prompt: list[int], params: GenerationParams, model: str,
        include_usage: bool, stop: StopSignal,
    ) -> AsyncIterator[str]:
        completion_id, created = new_completion_id(), int(time.time())

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True) -> str:
            body = ChatCompletionChunk(
                id=completion_id, created=created, model=model, usage=usage,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)] if choices else [],  # type: ignore[arg-type]
            )
            return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

        try:
            yield chunk(Delta(role="assistant", content=""))
            pieces = self.generator.stream(ref, prompt, params, stop)
            sentinel = object()
            while (item := await anyio.to_thread.run_sync(next, pieces, sentinel)) is not sentinel:
                if isinstance(item, Completion):
                    yield chunk(Delta(), finish=item.finish_reason)
                    if include_usage:
                        usage = Usage(prompt_tokens=len(prompt), completion_tokens=item.completion_tokens,
                                      total_tokens=len(prompt) + item.completion_tokens)
                        yield chunk(Delta(), usage=usage, choices=False)
                else:
                    yield chunk(Delta(content=item))
        except Exception as exc:
            log.exception("chat stream failed")
            error = exc if isinstance(exc, OpenFTError) else OpenFTError("Generation failed.")
            payload = error_body(error.message, type="server_error", param=error.param, code=error.code)
            yield f"data: {json.dumps(payload)}\n\n"
        finally:
            stop.cancel()  # no-op after a finished generation; ends one nobody reads any more
        yield "data: [DONE]\n\n"


async def _until_disconnected(
    work: Callable[[], list[Completion]], stop: StopSignal, is_disconnected: Callable[[], Awaitable[bool]]
) -> list[Completion]:
    """Run ``work`` in a thread; if the client goes away meanwhile, trip ``stop``."""
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
            return await anyio.to_thread.run_sync(work)
        finally:
            group.cancel_scope.cancel()


def completion_object(model: str, prompt_tokens: int, completions: list[Completion]) -> ChatCompletion:
    completion_tokens = sum(c.completion_tokens for c in completions)
    return ChatCompletion(
        id=new_completion_id(),
        created=int(time.time()),
        model=model,
        choices=[
            Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)  # type: ignore[arg-type]
            for i, c in enumerate(completions)
        ],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)
