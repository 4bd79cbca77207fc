"""Wire models of the Files API, as the spec's OpenAIFile and list/delete responses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from openft.schemas.common import WireModel


class OpenAIFile(WireModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    # Omitted, not null, for files that never expire (the spec types it integer).
    expires_at: int | None = Field(None, exclude_if=lambda value: value is None)
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"


class ListFilesResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFile]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeleteFileResponse(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
