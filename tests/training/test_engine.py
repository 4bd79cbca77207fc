"""The serving engine's model cache is bounded by its memory budget (LRU)."""

from __future__ import annotations

import pytest
from support import build_tiny_model

from openft.serving.engine import Engine, GenerationParams, ModelRef

pytestmark = pytest.mark.training


def test_least_recently_used_base_is_evicted(tmp_path, tiny_model_dir) -> None:
    other = build_tiny_model(tmp_path / "other", seed=1)
    engine = Engine(memory_budget_bytes=1, device="cpu")  # room for one base at a time
    first, second = ModelRef("a", tiny_model_dir), ModelRef("b", other)
    prompt = engine.prompt_ids(first, [{"role": "user", "content": "hi"}])
    engine.generate(first, prompt, GenerationParams(max_new_tokens=2, temperature=0))
    assert list(engine._bases) == [str(tiny_model_dir)]
    engine.generate(second, prompt, GenerationParams(max_new_tokens=2, temperature=0))
    assert list(engine._bases) == [str(other)]
