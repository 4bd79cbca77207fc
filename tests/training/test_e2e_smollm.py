"""End to end on the bundled SmolLM2-135M-Instruct, through the API only, as a
user would: a few dozen chat examples, 3 epochs, and a changed model."""

from __future__ import annotations

import pytest
import torch
from support import REPO, SMOLLM, Tenant
from test_jobs_train import wait_for

pytestmark = pytest.mark.training

PIRATE = ("matey", "arr", "yo ho", "hearty")


def answer(model, tokenizer, question: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}],
        add_generation_prompt=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=30, do_sample=False)
    return tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)


def test_bundled_model_learns_from_a_few_dozen_examples(make_training_server, bundled_model_dir) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    server = make_training_server()
    models = server.home / "models"
    models.mkdir(exist_ok=True)
    (models / bundled_model_dir.name).symlink_to(bundled_model_dir)  # skip a second conversion
    tenant = Tenant(server, "default", server.api_key)

    with (REPO / "examples" / "tiny-chat.jsonl").open("rb") as handle:
        training = tenant.sdk.files.create(file=handle, purpose="fine-tune")
    job = tenant.sdk.fine_tuning.jobs.create(
        model=SMOLLM, training_file=training.id, seed=1, suffix="pirate",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    done = wait_for(tenant, job.id, {"succeeded", "failed"}, timeout=900)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{SMOLLM}:default:pirate:{job.id[-8:]}"
    assert done.trained_tokens > 0 and len(done.result_files) == 1
    assert [c.step_number for c in tenant.sdk.fine_tuning.jobs.checkpoints.list(job.id)] == [90, 60, 30]
    events = [e.message for e in tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]  # auto-paginates
    assert "The job has successfully completed" in events
    assert sum(m.startswith("Step ") for m in events) == 90

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    base = AutoModelForCausalLM.from_pretrained(bundled_model_dir)
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(bundled_model_dir), server.home / "blobs" / "models" / job.id)
    question = "What is the capital of Italy?"  # not in the training file
    before, after = answer(base, tokenizer, question), answer(tuned, tokenizer, question)
    print(f"\nbase:  {before!r}\ntuned: {after!r}")
    assert not any(word in before.lower() for word in PIRATE)
    assert any(word in after.lower() for word in PIRATE)

    # The same, as a user does it: chat completions on the fine-tuned model.
    for model in (done.fine_tuned_model, f"{done.fine_tuned_model}:ckpt-step-90"):
        reply = tenant.sdk.chat.completions.create(
            model=model, temperature=0, max_tokens=30,
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": question}])
        assert reply.choices[0].message.content == after
    base_reply = tenant.sdk.chat.completions.create(
        model=SMOLLM, temperature=0, max_tokens=30,
        messages=[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}])
    assert base_reply.choices[0].message.content == before
