"""The serving generator: its model cache is bounded by its memory budget
(LRU), and a stop signal ends a generation at the next token."""

from __future__ import annotations

import pytest
from support import build_tiny_model

from openft.serving.generator import Generator
from openft.serving.types import GenerationParams, ModelRef, StopSignal

pytestmark = pytest.mark.training

HI = [{"role": "user", "content": "hi"}]


def test_least_recently_used_base_is_evicted(tmp_path, tiny_model_dir) -> None:
    other = build_tiny_model(tmp_path / "other", seed=1)
    generator = Generator(memory_budget_bytes=1, device="cpu")  # room for one base at a time
    first, second = ModelRef("a", tiny_model_dir), ModelRef("b", other)
    prompt = generator.prompt_ids(first, HI)
    generator.generate(first, prompt, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(60))
    assert list(generator._bases) == [str(tiny_model_dir)]
    generator.generate(second, prompt, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(60))
    assert list(generator._bases) == [str(other)]


def test_a_stopped_signal_ends_generation_and_reports_length(tiny_model_dir) -> None:
    generator = Generator(memory_budget_bytes=2**30, device="cpu")
    ref = ModelRef("a", tiny_model_dir)
    prompt = generator.prompt_ids(ref, HI)
    params = GenerationParams(max_new_tokens=500, temperature=1.0, seed=1)
    stop = StopSignal(60)
    stream = generator.stream(ref, prompt, params, stop)
    first = next(stream)
    assert isinstance(first, str)
    stop.cancel()
    *_, final = stream
    assert final.finish_reason == "length"
    assert final.completion_tokens < 100  # stopped at once, far from 500
    assert not generator._bases[str(tiny_model_dir)].lock.locked()

    # Past its deadline: a free lock is still taken, and generation ends after one token.
    (completion,) = generator.generate(ref, prompt, params, StopSignal(0))
    assert completion.finish_reason == "length" and completion.completion_tokens <= 1

