"""``GET /me``: the caller's organisation and the provider accounts it may route to."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from openft.gateway.accounts import AccountKind


class ProviderRef(BaseModel):
    """A provider account by name and kind: never its address or key."""

    name: str
    kind: AccountKind


class Organization(BaseModel):
    object: Literal["organization"] = "organization"
    id: str
    name: str | None
    providers: list[ProviderRef]
