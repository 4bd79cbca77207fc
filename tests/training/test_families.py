"""The model families users bring (``openft.families.FAMILIES``), each as a
tiny random model with the bundled tokenizer: a LoRA SFT run succeeds, and
the serving engine's greedy answers, alone and in one batch with another
adapter and the base, are the tokens Hugging Face ``generate`` gives with
the PEFT adapter. DPO and RFT run on a sliding-window and an MoE family, a
full fine-tune on an MoE family, and a combination a model cannot train is
a 400 when the job is created."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_rft import in_process

from openft.families import FAMILIES, Family
from openft.serving import constraints
from openft.serving.generator import Generator, collect
from openft.serving.types import GenerationParams, ModelRef, StopSignal
from openft.training.report import ListReporter

from support import Server, Tenant, build_family_model, jsonl
from test_jobs_train import wait_for

pytestmark = pytest.mark.training

WORDS = ["alpha", "bravo", "charlie", "delta"]
CHAT = [{"messages": [{"role": "user", "content": f"Spell out the words from number {i}."},
                      {"role": "assistant", "content": " ".join(WORDS[i % 4:] * 4)}]} for i in range(8)]
"""Long answers: the adapters learn words, not to end the turn at once (which would leave no rows to batch)."""
GREEDY = GenerationParams(max_new_tokens=10, temperature=0)
ASKS = [[{"role": "user", "content": "Say the word number " + "very " * (5 * i) + f"{i}."}] for i in range(2)]
"""Prompts of two lengths, both longer than the tiny models' sliding window (8)."""


def sft(tmp_path: Path, base: Path, job: str, *, seed: int, **hyperparameters) -> tuple[Path, ListReporter]:
    reporter = in_process(tmp_path, job, {"id": "local/family", "kind": "local", "path": str(base)}, CHAT, None, {
        "type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 20.0, **hyperparameters}}}, seed=seed)
    return tmp_path / "blobs" / "models" / job, reporter


def random_adapter(base: Path, folder: Path) -> Path:
    """A second adapter, with random weights on openft's targets (no training needed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openft.families import lora_targets

    model = AutoModelForCausalLM.from_pretrained(base)
    modules, parameters = lora_targets(model)
    torch.manual_seed(5)
    get_peft_model(model, LoraConfig(r=4, target_modules=modules, target_parameters=parameters or None,
                                     init_lora_weights=False)).save_pretrained(folder)
    return folder


def hf_generate(base: Path, adapter: Path | None, prompts: list[list[int]]) -> list[list[int]]:
    """Hugging Face ``generate``'s greedy tokens (through the end of turn)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    eos = model.generation_config.eos_token_id
    answers = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model.eval().generate(torch.tensor([prompt]), max_new_tokens=GREEDY.max_new_tokens,
                                        do_sample=False)
            tokens = out[0, len(prompt):].tolist()
            answers.append(tokens[: tokens.index(eos) + 1] if eos in tokens else tokens)
    return answers


def hf_logprobs(base: Path, adapter: Path, prompt: list[int], tokens: list[int]) -> list[float]:
    """The log-probability of each of ``tokens`` after ``prompt``, from one plain forward pass."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    with torch.inference_mode():
        logits = model.eval()(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()


def together(generator: Generator, asks: list[tuple[ModelRef, list[int]]]) -> list[list[int]]:
    """Greedy answers of requests queued at one engine step (so they share batches)."""
    engine = [generator.engine(ref) for ref, _ in asks][0]  # every adapter loaded before the engine waits
    sinks = [queue.SimpleQueue() for _ in asks]
    with engine.lock:  # the engine waits between two steps until every request is queued
        for (ref, prompt), sink in zip(asks, sinks, strict=True):
            generator.submit(ref, prompt, GREEDY, StopSignal(60), sink.put)
    return [collect(sink.get, 1)[0].tokens for sink in sinks]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.model_type)
def test_a_family_trains_with_lora_and_serves_the_answers_of_hf_generate(family: Family, tmp_path: Path) -> None:
    base = build_family_model(family.model_type, tmp_path / "base")
    first, reporter = sft(tmp_path, base, "ftjob-first", seed=1)
    second = random_adapter(base, tmp_path / "second")
    resolved = reporter.of("hyperparameters")[0]["resolved"]
    assert resolved["lora_dropout"] == (0.0 if "moe" in family.traits else 0.05)  # PEFT: no dropout on experts
    if "moe" in family.traits:
        config = json.loads((first / "adapter_config.json").read_text())
        assert sorted(config["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]

    generator = Generator(2**32, device="cpu", max_batch=16)
    try:
        refs = [ModelRef("ft:first", base, first), ModelRef("ft:second", base, second), ModelRef("base", base)]
        prompts = [generator.prompt_ids(refs[0], ask) for ask in ASKS]
        expected = {(ref.id, i): tokens for ref in refs
                    for i, tokens in enumerate(hf_generate(base, ref.adapter_path, prompts))}
        assert len({tuple(tokens) for tokens in expected.values()}) > 2, "the adapters changed nothing: a weak test"

        alone = [generator.generate(refs[0], p, GREEDY, StopSignal(60))[0].tokens for p in prompts]
        assert alone == [expected[("ft:first", i)] for i in range(len(prompts))]

        mixed = [(ref, i) for i in range(len(prompts)) for ref in refs]
        engine = generator.engine(refs[0])
        steps = engine.stats.mixed_steps
        answers = together(generator, [(ref, prompts[i]) for ref, i in mixed])
        assert answers == [expected[(ref.id, i)] for ref, i in mixed]
        assert engine.stats.mixed_steps > steps  # base and both adapters really shared decode steps

        # A grammar holds the adapter to a JSON schema; its logprobs are the model's own.
        grammar = constraints.json_schema_grammar(
            {"type": "object", "properties": {"w": {"enum": WORDS}}, "required": ["w"], "additionalProperties": False})
        [shaped] = generator.generate(refs[0], prompts[0], GREEDY, StopSignal(60), grammar=grammar, logprobs=0)
        assert json.loads(shaped.text)["w"] in WORDS
        reference = hf_logprobs(base, first, prompts[0], shaped.tokens)
        assert len(shaped.logprobs) == len(reference)
        assert max(abs(ours.logprob - theirs) for ours, theirs in zip(shaped.logprobs, reference, strict=True)) < 1e-4
    finally:
        generator.close()


@pytest.mark.parametrize("model_type", ["gemma3_text", "qwen3_moe"])
def test_dpo_and_rft_run_on_a_sliding_window_and_an_moe_family(model_type: str, tmp_path: Path) -> None:
    base = build_family_model(model_type, tmp_path / "base")
    spec = {"id": "local/family", "kind": "local", "path": str(base)}
    pairs = [{"input": {"messages": [{"role": "user", "content": f"Greet person {i}."}]},
              "preferred_output": [{"role": "assistant", "content": "Hello, friend!"}],
              "non_preferred_output": [{"role": "assistant", "content": "Go away."}]} for i in range(8)]
    dpo = in_process(tmp_path, "ftjob-dpo", spec, pairs, None, {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 50.0}}})
    losses = [r["data"]["train_loss"] for r in dpo.of("metrics")]
    assert losses[-1] < losses[0], losses

    prompts = [{"messages": [{"role": "user", "content": f"Pick one ({i})"}], "answer": "yes"} for i in range(4)]
    says_yes = {"type": "string_check", "name": "yes", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "operation": "like"}
    rft = in_process(tmp_path, "ftjob-rft", spec, prompts, prompts, {
        "type": "reinforcement", "reinforcement": {"grader": says_yes, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "max_completion_tokens": 6, "compute_multiplier": 0.5}}})
    assert [r["data"]["step"] for r in rft.of("metrics")] == [1]
    assert "train_reward_mean" in rft.of("metrics")[0]["data"]


def test_a_full_fine_tune_of_an_moe_family_learns_and_serves(tmp_path: Path) -> None:
    base = build_family_model("qwen3_moe", tmp_path / "base")
    tuned, reporter = sft(tmp_path, base, "ftjob-full", seed=1, training_type="full", n_epochs=3,
                          learning_rate_multiplier=100.0)
    losses = [r["data"]["train_loss"] for r in reporter.of("metrics")]
    assert losses[-1] < losses[0] - 0.3, losses
    generator = Generator(2**32, device="cpu")
    try:
        ref = ModelRef("ft:full", tuned)
        prompt = generator.prompt_ids(ref, ASKS[0])
        assert [generator.generate(ref, prompt, GREEDY, StopSignal(60))[0].tokens] == hf_generate(tuned, None, [prompt])
    finally:
        generator.close()


def test_a_model_says_what_it_supports_and_refuses_a_job_it_cannot_run(training_server: Server, tmp_path: Path
                                                                     ) -> None:
    """``openft models add`` and ``/v1/models`` describe the model; a LoRA
    dropout on MoE expert weights is a 400 at create time, naming the field."""
    tenant = Tenant(training_server, "families", training_server.new_key("families"))
    base = build_family_model("qwen3_moe", tmp_path / "moe")
    model_id = "local/tiny-moe"
    added = subprocess.run([sys.executable, "-m", "openft", "models", "add", model_id, str(base)],
                           env=training_server.env, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    assert "Qwen3MoeForCausalLM (Qwen3-MoE)" in added.stdout and "lora_dropout must be 0" in added.stdout

    described = tenant.sdk.models.retrieve(model_id).model_extra["capabilities"]
    assert described["traits"] == ["moe"] and described["serving"] is True
    assert described["methods"] == ["supervised", "dpo", "reinforcement"]
    assert described["training_memory_bytes"]["full"] == 4 * described["training_memory_bytes"]["lora"] > 0

    file_id = tenant.sdk.files.create(file=("train.jsonl", jsonl(CHAT * 2)), purpose="fine-tune").id
    response = tenant.http().post("/fine_tuning/jobs", json={
        "model": model_id, "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_dropout": 0.1}}}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "method.supervised.hyperparameters.lora_dropout"
    assert model_id in error["message"] and "expert" in error["message"]
    assert error["code"] == "unsupported_model_method"

    # Left to its default the dropout is 0, and the job trains and serves through the API.
    job = tenant.sdk.fine_tuning.jobs.create(model=model_id, training_file=file_id, seed=1,
                                             hyperparameters={"n_epochs": 1, "batch_size": 8})
    done = wait_for(tenant, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    resolved = tenant.http().get(f"/fine_tuning/jobs/{job.id}").json()["method"]["supervised"]["hyperparameters"]
    assert resolved["lora_dropout"] == 0.0
    reply = tenant.sdk.chat.completions.create(model=done.fine_tuned_model, messages=CHAT[0]["messages"][:1],
                                               temperature=0, max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_a_model_with_recurrent_layers_is_refused_serving_and_rft_with_the_reason(training_server: Server,
                                                                                 tmp_path: Path) -> None:
    """Qwen3-Next's linear-attention layers keep recurrent state, which the
    serving engine does not batch: chat, an eval run sampling it and RFT are
    400s naming the reason."""
    from transformers import AutoConfig

    folder = tmp_path / "next"
    AutoConfig.for_model("qwen3_next", num_hidden_layers=4).save_pretrained(folder)  # its config is all it takes
    added = subprocess.run([sys.executable, "-m", "openft", "models", "add", "local/tiny-next", str(folder)],
                           env=training_server.env, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    assert "serves: no" in added.stdout and "recurrent layers (linear_attention)" in added.stdout
    tenant = Tenant(training_server, "recurrent", training_server.new_key("recurrent"))

    chat = tenant.http().post("/chat/completions", json={
        "model": "local/tiny-next", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400, chat.text
    assert (chat.json()["error"]["param"], chat.json()["error"]["code"]) == ("model", "model_not_servable")
    assert "recurrent layers" in chat.json()["error"]["message"]
    with tenant.http() as http:  # an eval run that would sample it: refused the same way, before it is queued
        evaluation = http.post("/evals", json={"data_source_config": {"type": "custom", "item_schema": {
            "type": "object"}}, "testing_criteria": [{"type": "string_check", "name": "x", "input": "a",
                                                      "reference": "a", "operation": "eq"}]}).json()
        run = http.post(f"/evals/{evaluation['id']}/runs", json={"data_source": {
            "type": "completions", "model": "local/tiny-next", "source": {"type": "file_content", "content": [
                {"item": {}}]}, "input_messages": {"type": "template", "template": [
                    {"role": "user", "content": "hi"}]}}})
    assert (run.status_code, run.json()["error"]["code"]) == (400, "model_not_servable"), run.text

    grader = {"type": "string_check", "name": "yes", "input": "{{sample.output_text}}", "reference": "yes",
              "operation": "eq"}
    job = tenant.http().post("/fine_tuning/jobs", json={
        "model": "local/tiny-next", "training_file": "file-x", "validation_file": "file-y",
        "method": {"type": "reinforcement", "reinforcement": {"grader": grader}}})
    assert job.status_code == 400, job.text
    assert job.json()["error"]["param"] == "method.type" and "serving engine" in job.json()["error"]["message"]
