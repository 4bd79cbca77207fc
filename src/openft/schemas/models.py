"""Wire models of the Models API, as the spec's Model and its list/delete responses."""

from __future__ import annotations

from typing import Literal

from openft.schemas.common import WireModel


class ModelCapabilities(WireModel):
    """openft extension on base models: what the model supports, and why not
    where it does not (``openft.families.Capabilities``)."""

    architecture: str
    model_type: str
    family: str | None  # None: an architecture the suite has not shown end to end
    context_length: int | None
    parameters: int | None
    traits: list[str]
    methods: list[str]
    training_types: list[str]
    serving: bool
    tool_format: str
    reasoning: str
    refusals: dict[str, str]
    training_memory_bytes: dict[str, int]  # weights + optimizer state per training type, activations aside
    worker_memory_bytes: int | None  # what this machine has, to compare


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # openft extensions (as vLLM names them): the base model at the root of the
    # model's lineage, and the model it was trained from (None for a base model).
    root: str | None = None
    parent: str | None = None
    capabilities: ModelCapabilities | None = None  # base models whose weights are on this machine


class ListModelsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[Model]


class DeleteModelResponse(WireModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
