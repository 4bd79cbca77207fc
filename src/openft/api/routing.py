"""The route class of every API router: request bodies are decoded as strict
JSON before FastAPI validates them.

Beyond what ``json.loads`` refuses, a body is refused with a 400 in the
OpenAI envelope when it nests deeper than Python's decoder goes (instead of
a ``RecursionError`` deep in the framework) or when a string or key holds a
lone UTF-16 surrogate (``"\\ud800"``: valid JSON, but not Unicode text;
nothing downstream, from tokenizers to the response encoder, can use it).
The ``param`` names where the surrogate is. A body without any ``\\uD8..``
to ``\\uDF..`` escape (nearly all) costs one scan of its bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openft.text import encodes, first_bad_path

SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class InvalidBody(HTTPException):
    """A body that parses as JSON but cannot be used; FastAPI passes
    HTTPExceptions through its body parsing, and the one error handler renders
    it with its ``code`` and ``param``."""

    code = "invalid_json"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(400, message)
        self.param = param


def strict_json(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except RecursionError:
        raise InvalidBody("The JSON body is nested too deeply.") from None
    if SURROGATE_ESCAPE.search(body) and (found := first_bad_path(value, encodes)) is not None:
        where = found.encode("utf-8", "backslashreplace").decode()  # a key may hold the surrogate
        raise InvalidBody(f"Invalid '{where}': the text holds a lone surrogate escape (\\ud800 to "
                          "\\udfff without its pair), which is not valid Unicode.", param=where or None)
    return value


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class OpenFTRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
