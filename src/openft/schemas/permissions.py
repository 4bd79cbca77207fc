"""Wire models of checkpoint permissions (``client.fine_tuning.checkpoints.permissions``),
with organisation ids (``GET /me``) in the place of OpenAI's project ids."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from openft.schemas.common import ClosedRequestModel, WireModel


class CreateCheckpointPermissionRequest(ClosedRequestModel):
    project_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1,
                                                                                         max_length=100)]


class CheckpointPermission(WireModel):
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    id: str
    created_at: int
    project_id: str
    """The organisation the checkpoint is shared with."""


class CheckpointPermissionList(WireModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPermission]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedCheckpointPermission(WireModel):
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    id: str
    deleted: bool
