"""Wire models of the Models API, as the spec's Model and its list/delete responses."""

from __future__ import annotations

from typing import Literal

from openft.schemas.common import WireModel


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # openft extensions (as vLLM names them): the base model at the root of the
    # model's lineage, and the model it was trained from (None for a base model).
    root: str | None = None
    parent: str | None = None


class ListModelsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[Model]


class DeleteModelResponse(WireModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
