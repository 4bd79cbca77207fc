"""``GET /me``: which organisation the caller's key belongs to.

An openft extension (the dashboard shows it after sign-in, and scripts can
check a key with it). It returns only what the key already grants: the
organisation's id and name, and the provider accounts it may route to
(``x-tfy-provider-name``), by name and kind: never an account's address or key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.schemas.organization import Organization, ProviderRef

router = APIRouter(tags=["Organization"], route_class=OpenFTRoute)


@router.get("/me", response_model=Organization)
async def who_am_i(
    caller: Annotated[Caller, Depends(get_caller)], ctx: Annotated[AppContext, Depends(get_ctx)]
) -> Response:
    name = await ctx.org_name(caller.org_id)
    providers = [ProviderRef(name=account_name, kind=account.kind)
                 for account_name, account in ctx.providers.usable(caller.org_id, name).items()]
    return wire(Organization(id=caller.org_id, name=name, providers=providers))
