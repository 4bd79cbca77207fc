"""How a transformers model takes and returns its KV cache, across
transformers versions: shared by serving (the engine's decode steps) and
training (RFT's completion log-probs over a shared prompt). No torch import.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openft.ml_types import Model


def cache_keyword(model: Model) -> str:
    """The forward argument that takes a KV cache: ``cache`` in transformers
    5.x, ``past_key_values`` before (a PEFT model is asked about its base)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def cache_of(output: Any) -> Any:
    """The KV cache a forward pass returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
