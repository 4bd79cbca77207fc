"""A chat stream that fails half-way still ends with ``data: [DONE]``, and a
stream that ends (however it ends) trips its generation's stop signal."""

from __future__ import annotations

import asyncio
import json

from openft.config import load_settings
from openft.services.chat import ChatService
from openft.serving.types import GenerationParams, StopSignal


class FailingGenerator:
    def stream(self, ref, prompt, params, stop):
        yield "Hel"
        raise RuntimeError("the GPU caught fire")


def service(tmp_path, generator) -> ChatService:
    chat = ChatService(load_settings(home=tmp_path), registry=None, blobs=None)  # type: ignore[arg-type]
    chat._generator = generator
    return chat


def test_error_mid_stream_is_an_event_then_done(tmp_path) -> None:
    chat = service(tmp_path, FailingGenerator())
    stop = StopSignal(60)

    async def collect() -> list[str]:
        return [e async for e in chat.events(None, [1, 2], GenerationParams(), "m", False, stop)]  # type: ignore[arg-type]

    events = asyncio.run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[1]["choices"][0]["delta"]["content"] == "Hel"
    assert payloads[2]["error"]["type"] == "server_error"
    assert "fire" not in events[2]  # no internals leak to the client
    assert stop.cancelled


class EndlessGenerator:
    def stream(self, ref, prompt, params, stop):
        while not stop.should_stop():
            yield "tok "


def test_a_reader_that_leaves_stops_the_generation(tmp_path) -> None:
    chat = service(tmp_path, EndlessGenerator())
    stop = StopSignal(60)

    async def read_two_then_leave() -> None:
        events = chat.events(None, [1], GenerationParams(), "m", False, stop)  # type: ignore[arg-type]
        await events.__anext__()
        await events.__anext__()
        await events.aclose()

    asyncio.run(read_two_then_leave())
    assert stop.cancelled
