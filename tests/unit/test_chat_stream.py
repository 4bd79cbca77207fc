"""A chat stream that fails half-way still ends with ``data: [DONE]``."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from openft.api.routers.chat import _events
from openft.serving.engine import GenerationParams


class FailingEngine:
    def stream(self, ref, prompt, params):
        yield "Hel"
        raise RuntimeError("the GPU caught fire")


def test_error_mid_stream_is_an_event_then_done() -> None:
    ctx = SimpleNamespace(generator=FailingEngine())

    async def collect() -> list[str]:
        return [e async for e in _events(ctx, None, [1, 2], GenerationParams(), "m", False)]

    events = asyncio.run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[1]["choices"][0]["delta"]["content"] == "Hel"
    assert payloads[2]["error"]["type"] == "server_error"
    assert "fire" not in events[2]  # no internals leak to the client
