"""``GET /me``: which organisation the caller's key belongs to.

An openft extension (the dashboard shows it after sign-in, and scripts can
check a key with it). It returns only what the key already grants: the
organisation's id and name, and the provider accounts it may route to
(``x-tfy-provider-name``), by name and kind: never an account's address or key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx
from openft.api.routing import OpenFTRoute
from openft.store.queries import orgs

router = APIRouter(tags=["Organization"], route_class=OpenFTRoute)


@router.get("/me")
async def who_am_i(
    caller: Annotated[Caller, Depends(get_caller)], ctx: Annotated[AppContext, Depends(get_ctx)]
) -> dict[str, object]:
    async with ctx.reader() as db:
        name = await orgs.read_org_name(db, caller.org_id)
    providers = [{"name": account_name, "kind": account.kind}
                 for account_name, account in ctx.providers.usable(caller.org_id, name).items()]
    return {"object": "organization", "id": caller.org_id, "name": name, "providers": providers}
