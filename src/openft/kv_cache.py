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


def bytes_per_token(model: Model) -> int:
    """Bytes one token takes in a full-layer key/value cache of ``model`` (every decoder layer keeps
    a key and a value per key/value head), at the model's dtype."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base.config, "text_config", None) or base.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    element = next(base.parameters()).element_size()
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * element
