"""The model registry: which base models jobs may fine-tune.

Today it knows the bundled default only; the next issue plugs in local
folders (``openft models add``), the hub when online, and fine-tuned models.
"""

from __future__ import annotations

from collections.abc import Iterable

BUNDLED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelRegistry:
    def __init__(self, base_models: Iterable[str] = (BUNDLED_MODEL,)):
        self._base_models = tuple(dict.fromkeys(base_models))

    @property
    def base_models(self) -> tuple[str, ...]:
        return self._base_models

    def is_trainable(self, model_id: str) -> bool:
        return model_id in self._base_models
