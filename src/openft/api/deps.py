"""Request dependencies: the app context and the caller (key, surface, gateway headers)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from openft.api.context import AppContext
from openft.errors import InvalidRequest
from openft.gateway.accounts import HEADER
from openft.services.auth import Principal

GATEWAY_PREFIX = "/api/llm"


@dataclass(frozen=True)
class Caller:
    principal: Principal
    gateway: bool
    """True on the gateway surface (/api/llm), whose job status enum is narrower."""
    tfy_metadata: dict[str, str] | None

    @property
    def org_id(self) -> str:
        return self.principal.org_id


async def get_ctx(request: Request) -> AppContext:
    # async on purpose: FastAPI runs a plain `def` dependency in a thread pool.
    return request.app.state.ctx  # type: ignore[no-any-return]


async def get_caller(request: Request) -> Caller:
    ctx: AppContext = request.app.state.ctx
    assert ctx.authenticator is not None
    principal = await ctx.authenticator.authenticate(request.headers.get("authorization"))
    provider = request.headers.get(HEADER)
    if provider is not None:
        await _check_local_provider(ctx, provider, principal.org_id)
    return Caller(
        principal=principal,
        gateway=request.scope["path"].startswith(GATEWAY_PREFIX + "/"),
        tfy_metadata=tfy_metadata(request.headers.get("x-tfy-metadata")),
    )


async def _check_local_provider(ctx: AppContext, name: str, org_id: str) -> None:
    """A request this deployment answers itself may name this deployment's
    accounts only (files, fine-tuning and chat requests naming an upstream
    account never get here: ``openft.api.gateway`` sends them on)."""
    account = ctx.providers.resolve(name, org_id, await ctx.org_name(org_id))
    if account.upstream:
        raise InvalidRequest(
            f"Provider account {name!r} takes files, fine-tuning jobs and chat completions; this route is "
            f"answered by this deployment only: send it without {HEADER}.", param=HEADER,
            code="provider_not_routable")


TFY_METADATA_MAX_BYTES = 4096
TFY_METADATA_MAX_PAIRS = 16


def tfy_metadata(raw: str | None) -> dict[str, str] | None:
    """The ``x-tfy-metadata`` header: a JSON object of strings, at most 4 KiB and 16 pairs."""
    if raw is None:
        return None
    if len(raw) > TFY_METADATA_MAX_BYTES:
        raise InvalidRequest(f"The x-tfy-metadata header is longer than {TFY_METADATA_MAX_BYTES} characters.",
                             param="x-tfy-metadata", code="invalid_metadata_header")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()) \
            or len(value) > TFY_METADATA_MAX_PAIRS:
        raise InvalidRequest(
            f"The x-tfy-metadata header must be a JSON object of at most {TFY_METADATA_MAX_PAIRS} pairs whose "
            "values are strings.",
            param="x-tfy-metadata",
            code="invalid_metadata_header",
        )
    return value


def wire(model: BaseModel) -> Response:
    """Serialise a wire model once, straight to JSON bytes. Routes declare the
    model as ``response_model`` (for the OpenAPI document) but return this, so
    FastAPI does not validate the finished object a second time."""
    return Response(model.model_dump_json(), media_type="application/json")
