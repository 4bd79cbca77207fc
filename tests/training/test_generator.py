"""The serving generator and its batching engine, driven directly: the model
cache (LRU), batching that does not change greedy answers, requests joining
and leaving a running batch, the bounded queue, logprobs against a plain
forward pass, and grammar-constrained JSON."""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import torch

from openft.errors import Overloaded
from openft.serving import constraints
from openft.serving.engine import Request
from openft.serving.generator import Generator, collect
from openft.serving.types import Finished, GenerationParams, ModelRef, StopSignal, TokenEvent

from support import build_tiny_model

pytestmark = pytest.mark.training

HI = [{"role": "user", "content": "hi"}]
GREEDY = GenerationParams(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator(memory_budget_bytes=2**30, device="cpu", max_batch=8, max_queue=4)


@pytest.fixture(scope="module")
def ref(tiny_model_dir) -> ModelRef:
    return ModelRef("tiny", tiny_model_dir)


def prompts(generator: Generator, ref: ModelRef, count: int) -> list[list[int]]:
    """Prompts of several lengths, so batched rows need padding."""
    return [generator.prompt_ids(ref, [{"role": "user", "content": "word " * (i + 1)}]) for i in range(count)]


class Events:
    """A request's events, readable from the test thread."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.first_token, self.finished = threading.Event(), threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, TokenEvent):
            self.first_token.set()
        elif isinstance(event, Finished):
            self.finished.set()
        self.queue.put(event)

    def result(self):
        (completion,) = collect(self.queue.get, 1)
        return completion


def test_least_recently_used_base_is_evicted(tmp_path, tiny_model_dir) -> None:
    other = build_tiny_model(tmp_path / "other", seed=1)
    generator = Generator(memory_budget_bytes=1, device="cpu")  # room for one base at a time
    first, second = ModelRef("a", tiny_model_dir), ModelRef("b", other)
    prompt = generator.prompt_ids(first, HI)
    generator.generate(first, prompt, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(60))
    assert list(generator._bases) == [str(tiny_model_dir)]
    generator.generate(second, prompt, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(60))
    assert list(generator._bases) == [str(other)]
    generator.close()


def test_batched_greedy_answers_equal_the_answers_alone(generator, ref) -> None:
    asks = prompts(generator, ref, 8)
    alone = [generator.generate(ref, p, GREEDY, StopSignal(60))[0] for p in asks]
    before = generator.engine(ref).stats.as_dict()
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda p: generator.generate(ref, p, GREEDY, StopSignal(60))[0], asks))
    after = generator.engine(ref).stats.as_dict()
    assert [c.text for c in together] == [c.text for c in alone]
    assert after["rows"] - before["rows"] > after["steps"] - before["steps"]  # steps carried several rows


def test_a_request_joins_a_running_batch_and_finishes_first(generator, ref) -> None:
    engine = generator.engine(ref)
    long, short, stop = Events(), Events(), StopSignal(60)
    joined = engine.stats.joined_running
    generator.submit(ref, generator.prompt_ids(ref, HI), GenerationParams(max_new_tokens=4000, temperature=0),
                     stop, long)
    assert long.first_token.wait(30)
    generator.submit(ref, generator.prompt_ids(ref, HI), GenerationParams(max_new_tokens=3, temperature=0),
                     StopSignal(60), short)
    assert short.result().completion_tokens == 3
    assert not long.finished.is_set()  # the long one is still generating
    assert engine.stats.joined_running == joined + 1
    stop.cancel()


def test_a_cancelled_request_leaves_at_once_and_a_full_queue_refuses(tiny_model_dir) -> None:
    generator = Generator(memory_budget_bytes=2**30, device="cpu", max_batch=1, max_queue=1)
    ref = ModelRef("tiny", tiny_model_dir)
    prompt = generator.prompt_ids(ref, HI)
    long_params = GenerationParams(max_new_tokens=4000, temperature=1.0, seed=1)
    running, waiting, stop = Events(), Events(), StopSignal(60)
    generator.submit(ref, prompt, long_params, stop, running)
    assert running.first_token.wait(30)
    generator.submit(ref, prompt, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(60), waiting)
    with pytest.raises(Overloaded) as refused:  # one running, one waiting: full
        generator.submit(ref, prompt, GREEDY, StopSignal(60), Events())
    assert refused.value.status_code == 503 and refused.value.code == "server_overloaded"
    stop.cancel()  # the client left: its slot goes to the waiting request
    assert waiting.result().completion_tokens == 2
    assert generator.engine(ref).stats.cancelled == 1
    generated = running.queue.qsize()
    assert generated < 4000 and not any(isinstance(e, Finished) for e in iter_queue(running.queue))
    generator.close()


def iter_queue(q: queue.SimpleQueue):
    while not q.empty():
        yield q.get()


def test_a_request_waiting_past_its_deadline_fails_with_503(tiny_model_dir) -> None:
    generator = Generator(memory_budget_bytes=2**30, device="cpu", max_batch=1, max_queue=4)
    ref = ModelRef("tiny", tiny_model_dir)
    prompt = generator.prompt_ids(ref, HI)
    running, stop = Events(), StopSignal(60)
    generator.submit(ref, prompt, GenerationParams(max_new_tokens=4000, temperature=0), stop, running)
    assert running.first_token.wait(30)
    late = Events()
    generator.submit(ref, prompt, GREEDY, StopSignal(0), late)  # deadline already over
    stop.cancel()
    with pytest.raises(Overloaded, match="busy for the whole generation time limit"):
        late.result()
    generator.close()


def test_logprobs_match_a_plain_forward_pass(generator, ref, tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    prompt = prompts(generator, ref, 1)[0]
    (completion,) = generator.generate(ref, prompt, GenerationParams(max_new_tokens=6, temperature=0),
                                       StopSignal(60), logprobs=5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = list(prompt)
    for position, entry in enumerate(completion.logprobs):
        with torch.no_grad():
            reference = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        best = torch.topk(reference, 5)
        token = int(best.indices[0])  # greedy: the chosen token is the most likely one
        assert abs(entry.logprob - float(reference[token])) < 1e-4, position
        assert [round(t.logprob, 4) for t in entry.top_logprobs] == [round(v, 4) for v in best.values.tolist()]
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        ids.append(token)
    assert len(completion.logprobs) == completion.completion_tokens


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "colour", "tags", "ok"],
    "additionalProperties": False,
}


def test_json_schema_outputs_parse_and_validate_when_sampled(generator, ref) -> None:
    grammar = constraints.json_schema_grammar(SCHEMA)
    prompt = generator.prompt_ids(ref, [{"role": "user", "content": "A person as JSON."}])

    def sample(seed: int) -> str:
        params = GenerationParams(max_new_tokens=200, temperature=1.0, seed=seed)
        (completion,) = generator.generate(ref, prompt, params, StopSignal(60), grammar=grammar)
        assert completion.finish_reason == "stop"
        return completion.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(sample, range(20)))
    for text in outputs:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(outputs)) > 10  # sampled, not one answer


def test_unsupported_schema_keywords_are_named() -> None:
    from openft.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as caught:
        constraints.json_schema_grammar({"type": "array", "contains": {"type": "integer"}})
    assert caught.value.param == "response_format.json_schema.schema" and "contains" in caught.value.message


def random_adapter(base_dir, folder, seed: int, **config) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4 + seed, target_modules="all-linear", init_lora_weights=False, **config))
    model.save_pretrained(folder)


def test_batched_lora_equals_peft_mixed_batches(tiny_model_dir, tmp_path) -> None:
    """Every row gets exactly its own adapter's output (ranks 4 and 5, and the
    base), as PEFT's adapter_names computes it; DoRA falls back to PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openft.serving.lora import BatchedLoRA

    for seed in (0, 1):
        random_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "a0",
                                      adapter_name="a0").eval()
    model.load_adapter(tmp_path / "a1", adapter_name="a1")
    names = ["__base__", "a0", "a1", "a1", "a0"]
    ids = torch.randint(0, 1000, (len(names), 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(input_ids=ids, adapter_names=names).logits
        lora = BatchedLoRA(model)
        assert lora.rebuild()
        lora.select(names, torch.device("cpu"))
        batched = model(input_ids=ids).logits
        lora.select(["__base__"] * len(names), torch.device("cpu"))
        base = model(input_ids=ids).logits
    assert torch.allclose(batched, reference, atol=1e-5)
    assert torch.equal(base[0], batched[0]) and not torch.allclose(base[1], batched[1], atol=1e-3)

    random_adapter(tiny_model_dir, tmp_path / "dora", 2, use_dora=True)
    model.load_adapter(tmp_path / "dora", adapter_name="dora")
    assert not BatchedLoRA(model).rebuild()


def test_a_bfloat16_generator_runs_the_model_in_bfloat16_and_answers_as_it_does(tiny_model_dir) -> None:
    """OPENFT_SERVING_DTYPE=bfloat16 on the CPU: the weights are bfloat16 and greedy answers are the
    bfloat16 model's own (Hugging Face ``generate`` on the same weights), batched or alone."""
    from transformers import AutoModelForCausalLM

    generator = Generator(memory_budget_bytes=2**30, device="cpu", dtype="bfloat16")
    ref = ModelRef("tiny-bf16", tiny_model_dir)
    asks = prompts(generator, ref, 3)
    with ThreadPoolExecutor(max_workers=3) as pool:
        served = list(pool.map(lambda p: generator.generate(ref, p, GREEDY, StopSignal(60))[0].tokens, asks))
    assert {p.dtype for p in generator._bases[str(tiny_model_dir)].model.parameters()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    for prompt, tokens in zip(asks, served, strict=True):
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(tokens), do_sample=False)
        assert out[0, len(prompt):].tolist() == tokens
    generator.close()


def test_single_rows_through_openblas_give_torchs_logits_and_answers(tiny_model_dir) -> None:
    """openft.serving.blas: a served float32 model's single-row products run on numpy's OpenBLAS;
    logits agree with torch's own to float32 rounding, greedy answers are the same, and anything
    with a gradient, or several rows, still takes torch's path."""
    from threadpoolctl import threadpool_info
    from transformers import AutoModelForCausalLM

    from openft.serving.blas import route_linears

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    routed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert route_linears(routed) == sum(type(m) is torch.nn.Linear for m in routed.modules()) > 0
    assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        for row in (ids[:, :1], ids[:, :3], ids):  # one row per step once the prompt is in
            torch.testing.assert_close(routed(row).logits, plain(row).logits, rtol=1e-5, atol=1e-5)
        greedy = dict(max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids))
        assert routed.generate(ids, **greedy).tolist() == plain.generate(ids, **greedy).tolist()
    layer = next(m for m in routed.modules() if type(m) is torch.nn.Linear)
    x = torch.randn(1, layer.in_features, requires_grad=True)
    layer(x).sum().backward()  # training: torch's path, with its gradient
    assert x.grad is not None


def test_single_rows_take_the_library_measured_faster_on_this_cpu(tiny_model_dir, monkeypatch) -> None:
    """Which library streams one row's products faster depends on the CPU, so the generator times both
    on the loaded weights and routes single rows through OpenBLAS only when it wins by the margin; it
    measures on the engine's thread, the one that computes (a second thread's OpenMP workers would keep
    spinning on the cores)."""
    from transformers import AutoModelForCausalLM

    from openft.serving import blas

    timing = blas.openblas_is_faster(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    assert timing.torch_seconds > 0 and timing.openblas_seconds > 0  # a pass on each library, in seconds
    for openblas_seconds, routed in ((0.5, True), (0.95, False)):
        threads: list[str] = []

        def measured(model, seconds: float = openblas_seconds, seen: list[str] = threads) -> blas.SingleRowTiming:
            seen.append(threading.current_thread().name)
            return blas.SingleRowTiming(1.0, seconds)

        monkeypatch.setattr(blas, "openblas_is_faster", measured)
        generator = Generator(memory_budget_bytes=2**30, device="cpu")
        ref = ModelRef(f"tiny-rows-{routed}", tiny_model_dir)
        answer = generator.generate(ref, prompts(generator, ref, 1)[0], GREEDY, StopSignal(60))[0]
        model = generator._bases[str(tiny_model_dir)].model
        layers = [m for m in model.modules() if type(m) is torch.nn.Linear]
        assert all(hasattr(m, "_openblas_weight_t") == routed for m in layers)
        assert answer.tokens and threads == [f"openft-engine-{tiny_model_dir.name}"]
        generator.close()


def test_the_key_value_cache_is_bounded_requests_wait_or_are_refused(tiny_model_dir) -> None:
    """OPENFT_SERVING_KV_CACHE_MB: a bound that holds one request's rows (prompt + max_tokens) but not
    two makes the second wait for the first, whatever the batch size; a request that could not fit
    even alone generates what fits ('length'), one whose prompt cannot fit is refused; the stats say
    what the cache holds."""
    from openft.errors import InvalidRequest

    probe = Generator(memory_budget_bytes=2**30, device="cpu")
    ref = ModelRef("tiny-bounded", tiny_model_dir)
    prompt = probe.prompt_ids(ref, HI)
    per_token = probe.engine(ref).bytes_per_token
    probe.close()
    params = GenerationParams(max_new_tokens=40, temperature=0)
    width = len(prompt) + params.max_new_tokens
    generator = Generator(memory_budget_bytes=2**30, device="cpu", max_batch=8,
                          max_cache_bytes=int(1.5 * width * per_token))  # room for one such row, not two
    first, second = Events(), Events()
    generator.submit(ref, prompt, params, StopSignal(60), first)
    generator.submit(ref, prompt, params, StopSignal(60), second)
    assert first.first_token.wait(30)
    memory = generator.stats()[tiny_model_dir.name]
    assert memory["kv_bytes_per_token"] == per_token and memory["kv_cache_limit_bytes"] == int(1.5 * width * per_token)
    assert 0 < memory["kv_cache_bytes"] and memory["kv_cache_reserved_bytes"] <= memory["kv_cache_limit_bytes"]
    assert first.result().tokens == second.result().tokens  # both served, one after the other
    assert generator.engine(ref).stats.largest_batch == 1
    capped = generator.generate(ref, prompt, GenerationParams(max_new_tokens=4 * width, temperature=1.0, seed=3),
                                StopSignal(60))[0]
    most = int(1.5 * width * per_token) // per_token
    assert capped.completion_tokens <= most - len(prompt)
    generator.close()
    tight = Generator(memory_budget_bytes=2**30, device="cpu", max_cache_bytes=per_token * (len(prompt) // 2))
    with pytest.raises(InvalidRequest) as refused:
        tight.submit(ref, prompt, params, StopSignal(60), Events())
    assert refused.value.param == "messages"
    tight.close()


def test_a_prompt_that_begins_like_an_earlier_one_prefills_only_the_rest(tiny_model_dir, tmp_path) -> None:
    """The prefix cache: prompts sharing a system prompt reuse its key/value rows (counted in the stats),
    alone or batched, and give the answers, logprobs included, of a generator without it; an adapter's
    prompt never reuses the base's rows, nor one organisation's another's."""
    from openft.serving.prefix_cache import BLOCK

    random_adapter(tiny_model_dir, tmp_path / "adapter", 0)
    system = {"role": "system", "content": "You answer briefly and never use lists. " * 4}
    asks = [[system, {"role": "user", "content": f"question {'x ' * i}"}] for i in range(5)]
    base, tuned = ModelRef("tiny-prefix", tiny_model_dir), ModelRef("ft:tiny-prefix", tiny_model_dir,
                                                                   tmp_path / "adapter")
    params = GenerationParams(max_new_tokens=8, temperature=0)

    def answers(generator: Generator, ref: ModelRef, batched: list[list[int]]) -> list:
        first = generator.generate(ref, batched[0], params, StopSignal(60), logprobs=2)  # stores the system prompt
        with ThreadPoolExecutor(max_workers=len(batched)) as pool:
            rest = list(pool.map(lambda p: generator.generate(ref, p, params, StopSignal(60), logprobs=2)[0],
                                 batched[1:]))
        return [first[0], *rest]

    cached, plain = Generator(2**30, device="cpu"), Generator(2**30, device="cpu", prefix_cache_bytes=0)
    prompts_ = [cached.prompt_ids(base, ask) for ask in asks]
    common = next(i for i, tokens in enumerate(zip(*prompts_, strict=False)) if len(set(tokens)) > 1)
    assert common >= 2 * BLOCK
    for ref in (base, tuned):
        before = cached.engine(base).memory()
        got, expected = answers(cached, ref, prompts_), answers(plain, ref, prompts_)
        after = cached.engine(base).memory()
        assert after["prefix_cache_hits"] - before["prefix_cache_hits"] == len(asks) - 1  # not the first
        assert after["prefix_tokens_reused"] - before["prefix_tokens_reused"] >= common * (len(asks) - 1)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.tokens == theirs.tokens
            assert max(abs(a.logprob - b.logprob) for a, b in zip(mine.logprobs, theirs.logprobs,
                                                                  strict=True)) < 1e-4
    assert plain.engine(base).memory()["prefix_cache_hits"] == 0
    assert 0 < cached.engine(base).memory()["prefix_cache_bytes"] <= 256 * 2**20
    for scope, reused in (("another-org", False), ("another-org", True)):  # never across organisations
        hits = cached.engine(base).memory()["prefix_cache_hits"]
        events: queue.SimpleQueue = queue.SimpleQueue()
        cached.submit(base, prompts_[2], params, StopSignal(60), events.put, cache_scope=scope)
        collect(events.get, 1)
        assert cached.engine(base).memory()["prefix_cache_hits"] == hits + reused
    cached.close()
    plain.close()


def test_int8_weights_serve_the_quantized_models_answers_with_adapters(tiny_model_dir, tmp_path) -> None:
    """OPENFT_SERVING_DTYPE=int8: the base's linear layers run on int8 weights (their logits move off
    float32's by quantization error, not more), the engine answers as Hugging Face ``generate`` on the
    same quantized model, alone or batched, and an adapter serves on top in float32 (PEFT's own
    forward agrees)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openft.serving.int8 import quantize_linears

    random_adapter(tiny_model_dir, tmp_path / "adapter", 0)
    generator = Generator(memory_budget_bytes=2**30, device="cpu", dtype="int8")
    base, tuned = ModelRef("tiny-int8", tiny_model_dir), ModelRef("ft:tiny-int8", tiny_model_dir, tmp_path / "adapter")
    asks = prompts(generator, base, 3)
    served = {ref: [generator.generate(ref, p, GREEDY, StopSignal(60))[0].tokens for p in asks]
              for ref in (base, tuned)}
    with ThreadPoolExecutor(max_workers=6) as pool:  # batched: rows of both, prompts of several lengths
        batched = list(pool.map(lambda job: generator.generate(job[0], job[1], GREEDY, StopSignal(60))[0].tokens,
                                [(ref, p) for ref in (base, tuned) for p in asks]))
    assert batched == served[base] + served[tuned]  # per-row scales, exact integer sums: batch-invariant
    loaded = generator._bases[str(tiny_model_dir)]
    layers = [m for name, m in loaded.model.get_base_model().named_modules()
              if type(m) is torch.nn.Linear and "lora_" not in name]
    assert layers and all(hasattr(m, "_openft_int8") for m in layers)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    quantized = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    added = quantize_linears(quantized)
    assert added == sum(m.weight.numel() + 8 * m.out_features for m in layers)  # a byte a weight, a scale a row
    ids = torch.tensor([asks[0]])
    with torch.inference_mode():
        exact, approximate = plain(ids).logits, quantized(ids).logits
        error = (exact - approximate).abs().max() / exact.abs().max()
        assert 0 < error < 0.05, error  # int8 in use, within quantization error
        for ref in (base, tuned):
            model = quantized if ref is base else PeftModel.from_pretrained(quantized, tmp_path / "adapter")
            for prompt, tokens in zip(asks, served[ref], strict=True):
                ids = torch.tensor([prompt])
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=len(tokens), do_sample=False)
                assert out[0, len(prompt):].tolist() == tokens
    assert served[base] != served[tuned]  # the adapter changed the answers
    generator.close()


def test_a_long_prompt_is_prefilled_in_parts_between_the_running_rows_steps(tiny_model_dir) -> None:
    """OPENFT_SERVING_PREFILL_CHUNK: a prompt longer than the chunk is prefilled a part per engine step,
    each part followed by the running rows' decode step (so they are not stalled for the whole prefill);
    the running answer and the long prompt's own answer equal those of whole-prompt prefills."""
    chunked = Generator(2**30, device="cpu", prefill_chunk=16, prefix_cache_bytes=0)
    whole = Generator(2**30, device="cpu", prefill_chunk=0, prefix_cache_bytes=0)
    ref = ModelRef("tiny-chunked", tiny_model_dir)
    short = chunked.prompt_ids(ref, HI)
    long = chunked.prompt_ids(ref, [{"role": "user", "content": "word " * 200}])
    parts = -(-len(long) // 16)
    assert parts >= 10
    running = GenerationParams(max_new_tokens=200, temperature=0)
    expected_short = whole.generate(ref, short, running, StopSignal(60))[0].tokens
    expected_long = whole.generate(ref, long, GREEDY, StopSignal(60))[0].tokens
    assert whole.engine(ref).stats.prefill_chunks == 0
    events = Events()
    chunked.submit(ref, short, running, StopSignal(60), events)
    assert events.first_token.wait(30)
    before = chunked.engine(ref).stats.as_dict()
    assert chunked.generate(ref, long, GREEDY, StopSignal(60))[0].tokens == expected_long
    after = chunked.engine(ref).stats.as_dict()
    assert events.result().tokens == expected_short and len(expected_short) > parts  # it ran throughout
    assert after["prefill_chunks"] - before["prefill_chunks"] == parts
    assert after["interleaved_steps"] - before["interleaved_steps"] >= parts - 1
    chunked.close()
    whole.close()


def test_loaded_adapters_are_bounded_and_the_least_recently_used_idle_one_unloads(tiny_model_dir, tmp_path) -> None:
    """OPENFT_SERVING_MAX_ADAPTERS: past the bound, loading a fine-tuned model unloads the least recently
    used one no request is using (it answers the same when it comes back); when every loaded one is
    answering, a request for another is a 503, and it is served once one is free."""
    for seed in range(3):
        random_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed)
    generator = Generator(memory_budget_bytes=2**30, device="cpu", max_adapters=2)
    base = ModelRef("tiny-adapters", tiny_model_dir)
    tuned = [ModelRef(f"ft:tiny-adapters:{seed}", tiny_model_dir, tmp_path / f"a{seed}") for seed in range(3)]
    prompt = prompts(generator, base, 1)[0]
    first = [generator.generate(ref, prompt, GREEDY, StopSignal(60))[0].tokens for ref in tuned]

    def stats() -> dict[str, int]:
        return generator.stats()[tiny_model_dir.name]

    assert (stats()["adapters_loaded"], stats()["adapters_evicted"], stats()["adapters_limit"]) == (2, 1, 2)
    assert len(set(map(tuple, first))) == 3  # three different adapters
    assert generator.generate(tuned[0], prompt, GREEDY, StopSignal(60))[0].tokens == first[0]  # reloaded
    assert stats()["adapters_evicted"] == 2  # tuned[1] was the least recently used
    long = GenerationParams(max_new_tokens=4000, temperature=0)
    stops, streams = [StopSignal(60), StopSignal(60)], [Events(), Events()]
    for ref, stop, events in zip((tuned[0], tuned[2]), stops, streams, strict=True):
        generator.submit(ref, prompt, long, stop, events)
        assert events.first_token.wait(30)
    with pytest.raises(Overloaded) as refused:
        generator.generate(tuned[1], prompt, GREEDY, StopSignal(60))
    assert "OPENFT_SERVING_MAX_ADAPTERS" in refused.value.message
    assert not any(events.finished.is_set() for events in streams)  # both were still answering
    stops[0].deadline = 0  # its time is up: it ends ('length') and leaves the batch in that step
    assert streams[0].finished.wait(30)
    assert generator.generate(tuned[1], prompt, GREEDY, StopSignal(60))[0].tokens == first[1]
    assert stats()["adapters_loaded"] == 2
    stops[1].cancel()
    generator.close()


class _LeavesMidPrefill(StopSignal):
    """A client that leaves after its long prompt's second part (the engine asks before each part)."""

    def __init__(self) -> None:
        super().__init__(60)
        self.asked = 0

    def should_stop(self) -> bool:
        self.asked += 1
        if self.asked == 3:
            self.cancel()
        return super().should_stop()


def test_a_client_that_leaves_while_its_long_prompt_is_prefilled_stops_it_at_once(tiny_model_dir) -> None:
    """Work nobody waits for stops: a long prompt whose client leaves between two parts of its prefill
    computes no further part, frees its rows, and the request beside it answers as it would alone."""
    generator = Generator(2**30, device="cpu", prefill_chunk=16, prefix_cache_bytes=0)
    ref = ModelRef("tiny-leaves", tiny_model_dir)
    long = generator.prompt_ids(ref, [{"role": "user", "content": "word " * 200}])
    short = generator.prompt_ids(ref, HI)
    alone = generator.generate(ref, short, GREEDY, StopSignal(60))[0].tokens
    before = generator.engine(ref).stats.as_dict()
    left, beside = Events(), Events()
    generator.engine(ref).submit_all([  # admitted in one step: the long one is prefilled in parts
        Request(long, GREEDY, _LeavesMidPrefill(), left), Request(short, GREEDY, StopSignal(60), beside)])
    assert beside.result().tokens == alone and len(alone) > 3  # the engine ran past the third part's turn
    after = generator.engine(ref).stats.as_dict()
    short_parts = -(-len(short) // 16)  # the chat template's system prompt makes the short one two parts too
    assert after["prefill_chunks"] - before["prefill_chunks"] == 2 + short_parts
    assert after["cancelled"] - before["cancelled"] == 1
    assert left.queue.empty()  # nobody is sent anything
    generator.close()
