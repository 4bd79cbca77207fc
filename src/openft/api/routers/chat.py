"""Chat completions for base, fine-tuned and checkpoint models (OpenAI API)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.errors import InvalidRequest, OpenFTError
from openft.schemas.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Delta, Usage
from openft.serving.engine import Completion
from openft.services import chat as service

log = logging.getLogger(__name__)
router = APIRouter(tags=["Chat"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionRequest,
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> Response:
    params = body.to_generation_params()
    if body.stream and params.n > 1:
        raise InvalidRequest("Streaming supports n=1 only.", param="n")
    async with ctx.reader() as db:
        ref = await service.resolve(db, ctx.settings, ctx.registry, ctx.blobs, caller.org_id, body.model)
    messages = body.plain_messages()
    prompt = await anyio.to_thread.run_sync(ctx.generator.prompt_ids, ref, messages)
    if not body.stream:
        completions = await anyio.to_thread.run_sync(ctx.generator.generate, ref, prompt, params)
        return wire(service.completion_object(body.model, len(prompt), completions))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _events(ctx, ref, prompt, params, body.model, include_usage), media_type="text/event-stream"
    )


async def _events(
    ctx: AppContext, ref: Any, prompt: list[int], params: Any, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, [DONE]
    (also after an error, which is sent as an error event)."""
    completion_id, created = service.new_completion_id(), int(time.time())

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True) -> str:
        body = ChatCompletionChunk(
            id=completion_id, created=created, model=model, usage=usage,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)] if choices else [],  # type: ignore[arg-type]
        )
        return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

    try:
        yield chunk(Delta(role="assistant", content=""))
        pieces = ctx.generator.stream(ref, prompt, params)
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
        payload = {"error": {"message": error.message, "type": "server_error", "param": error.param, "code": error.code}}
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"
