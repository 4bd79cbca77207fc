"""Where a decode step of the serving engine goes, on the bundled SmolLM2-135M (fp32, CPU).

In one run, for 1 and 16 concurrent greedy requests (the 16 prompts of the
serving benches, ``max_tokens`` 48):

* **engine**: openft's batching engine in-process (``openft.serving.Generator``):
  tokens/s and milliseconds per decode step as served (single rows' products
  on the library measured faster at load, ``openft.serving.blas``; the
  prefix cache on), then with single rows forced on torch and on OpenBLAS,
  and with the prefix cache off, and whether their greedy answers agree;
* **model only**: a bare Hugging Face decode loop on the same model (one
  forward per step, its own cache, argmax), the floor the engine's Python
  work sits on;
* **profile**: ``torch.profiler``'s operators of ten decode steps of that loop;
* **weight streaming**: the model's matrix products alone, each matrix read
  once per step as a decode step reads them, at fp32 and bf16: what the
  memory bus allows;
* **bfloat16** (``OPENFT_SERVING_DTYPE=bfloat16``): the engine's tokens/s on
  bfloat16 weights, and how many of the 16 greedy answers equal float32's.

docs/serving-profile.md holds a run's output and what it means.

    .venv/bin/python bench/serving_profile.py [--home ~/.openft]
"""

from __future__ import annotations

import argparse
import queue
import time
from pathlib import Path

import torch

TOPICS = ["the sea", "a lighthouse", "winter", "a robot", "a library", "the moon", "a garden", "a train",
          "a mountain", "a city at night", "a storm", "a fox", "a violin", "a desert", "a river", "a market"]
TOKENS = 48


def engine_rates(folder: Path, prompts: list[list[int]], dtype: str = "float32", rows: str = "measured",
                 prefix_cache: bool = True) -> tuple[dict[int, tuple[float, float]], list[list[int]]]:
    """Tokens/s and ms per decode step of the engine, one request after another and then 16 at once;
    the 16 answers. ``rows``: single rows' products on the library measured faster at load (the
    default), or forced to ``torch`` or ``openblas``; ``prefix_cache=False``: every prompt prefilled whole."""
    from openft.serving import blas
    from openft.serving.generator import Generator, collect
    from openft.serving.types import GenerationParams, ModelRef, StopSignal

    measure = blas.openblas_is_faster
    if rows != "measured":
        forced = blas.SingleRowTiming(1.0, 0.5 if rows == "openblas" else 1.0)
        blas.openblas_is_faster = lambda model: forced  # type: ignore[assignment,misc]
    generator = Generator(2**34, device="cpu", max_batch=16, dtype=dtype,
                          prefix_cache_bytes=256 * 2**20 if prefix_cache else 0)
    ref = ModelRef("base", folder)
    params = GenerationParams(max_new_tokens=TOKENS, temperature=0)
    generator.generate(ref, [0] * 4, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(600))
    rates = {}
    for clients in (1, 16):
        engine = generator.engine(ref)
        steps = engine.stats.steps
        began = time.perf_counter()
        sinks = []
        for prompt in prompts[:clients]:
            sink: queue.SimpleQueue[object] = queue.SimpleQueue()
            generator.submit(ref, prompt, params, StopSignal(600), sink.put)
            sinks.append(sink)
        answers = [collect(sink.get, 1)[0].tokens for sink in sinks]
        took = time.perf_counter() - began
        rates[clients] = (sum(map(len, answers)) / took, took * 1000 / max(1, engine.stats.steps - steps))
    generator.close()
    blas.openblas_is_faster = measure  # type: ignore[assignment]
    return rates, answers


def model_loop(model: torch.nn.Module, prompt: list[int], batch: int, profile: bool = False) -> float:
    """ms per decode step of a bare decode loop (prefill excluded)."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt] * batch)
    out = model(input_ids=ids, use_cache=True, past_key_values=DynamicCache(), logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.ones(batch, ids.shape[1] + 1, dtype=torch.long)
    steps = 10 if profile else TOKENS
    began = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], 1)
    return (time.perf_counter() - began) * 1000 / steps


def weight_streaming(model: torch.nn.Module, dtype: torch.dtype) -> tuple[float, float]:
    """ms for one pass of every linear layer's matrix (and the output head) at batch 1, and GB/s."""
    weights = [m.weight.detach().to(dtype) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=dtype) for w in weights}
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for weight in weights:
            torch.nn.functional.linear(inputs[weight.shape[1]], weight)
        best = min(best, time.perf_counter() - began)
    size = sum(w.numel() * w.element_size() for w in weights)
    return best * 1000, size / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("~/.openft").expanduser())
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.weights import ensure_bundled

    folder = ensure_bundled(args.home / "models")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Write two sentences about {t}."}],
                                             add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for t in TOPICS]
    print(f"bundled SmolLM2-135M, fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{TOKENS} new tokens per request")
    from openft.serving import blas

    # The engines first: each computes on its own thread, and a thread that computed before them (this
    # one) would leave its OpenMP workers spinning on the cores (openft.serving.engine's docstring).
    rates, answers = engine_rates(folder, prompts)
    paths = {path: engine_rates(folder, prompts, rows=path) for path in ("torch", "openblas")}
    whole, whole_answers = engine_rates(folder, prompts, prefix_cache=False)
    half, half_answers = engine_rates(folder, prompts, "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    timing = blas.openblas_is_faster(model)
    print(f"single-row pass at load: torch {timing.torch_seconds * 1000:.1f} ms, OpenBLAS (1 thread) "
          f"{timing.openblas_seconds * 1000:.1f} ms: {'OpenBLAS' if timing.openblas_wins else 'torch'} serves them")
    for path, (forced, forced_answers) in paths.items():
        print(f"single rows forced on {path:>8}: 1 at once {forced[1][0]:6.1f} tok/s, {forced[1][1]:5.1f} ms/step; "
              f"16 at once {forced[16][0]:6.1f} tok/s; greedy answers identical to the default's: "
              f"{sum(a == b for a, b in zip(answers, forced_answers, strict=True))} of 16")
    print(f"prefix cache off: 1 at once {whole[1][0]:6.1f} tok/s, 16 at once {whole[16][0]:6.1f} tok/s "
          f"({rates[16][0] / whole[16][0]:.2f}x with it); greedy answers identical: "
          f"{sum(a == b for a, b in zip(answers, whole_answers, strict=True))} of 16")
    with torch.inference_mode():
        for clients in (1, 16):
            loop = model_loop(model, prompts[0], clients)
            rate, step = rates[clients]
            print(f"{clients:>2} at once: engine {rate:6.1f} tok/s, {step:5.1f} ms/step | bare model loop "
                  f"{loop:5.1f} ms/step ({clients * 1000 / loop:6.1f} tok/s)")
        for clients in (1, 16):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model_loop(model, prompts[0], clients, profile=True)
            print(f"\nten decode steps at {clients}, by operator (self time):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        same = sum(a == b for a, b in zip(answers, half_answers, strict=True))
        agree = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                 for a, b in zip(answers, half_answers, strict=True)]
        print(f"\nOPENFT_SERVING_DTYPE=bfloat16: 1 at once {half[1][0]:.1f} tok/s ({half[1][0] / rates[1][0]:.2f}x), "
              f"16 at once {half[16][0]:.1f} tok/s ({half[16][0] / rates[16][0]:.2f}x); greedy answers identical to "
              f"float32's: {same} of 16, first difference after {sum(agree) / len(agree):.1f} tokens on average")
        for dtype in (torch.float32, torch.bfloat16):
            took, rate = weight_streaming(model, dtype)
            print(f"weight streaming, {str(dtype).removeprefix('torch.')}: {took:.1f} ms per step ({rate:.1f} GB/s)")


if __name__ == "__main__":
    main()
