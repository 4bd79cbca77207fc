"""Chat completions for base, fine-tuned and checkpoint models (OpenAI API).

The router only picks JSON or a stream; ``services.chat.ChatService`` owns
generation, the stream's events and its errors.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.schemas.chat import ChatCompletion, ChatCompletionRequest
from openft.services.chat import ChatStream

router = APIRouter(tags=["Chat"], route_class=OpenFTRoute)


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    caller: Annotated[Caller, Depends(get_caller)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> Response:
    result = await ctx.chat.create(ctx.reader, caller.org_id, body, request.is_disconnected)
    if isinstance(result, ChatStream):
        return EventStream(result)
    return wire(result)


@router.get("/serving/stats")
async def serving_stats(
    caller: Annotated[Caller, Depends(get_caller)], ctx: Annotated[AppContext, Depends(get_ctx)]
) -> dict[str, object]:
    """openft extension: what each loaded base model's engine is doing and
    has done (counters since the process started; no request content)."""
    return {"object": "serving.stats", "engines": ctx.chat.stats()}


class EventStream(StreamingResponse):
    """Server-sent events whose generation stops when the response ends,
    however it ends (finished, client gone, server shutting down)."""

    def __init__(self, stream: ChatStream):
        super().__init__(stream.events, media_type="text/event-stream")
        self._stop = stream.stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stop.cancel()
