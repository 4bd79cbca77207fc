"""Jobs that continue a fine-tuned model or checkpoint: they start from its
weights, the new model shows its lineage, SFT and DPO follow each other, and
another organisation's model is not found."""

from __future__ import annotations

import io
import tarfile

import openai
import pytest

from support import Tenant, chat_file, jsonl, preference_example
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training

SFT = {"n_epochs": 1, "batch_size": 10, "lora_dropout": 0.0}


@pytest.fixture
def trainer(training_server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


def upload(tenant: Tenant, content: bytes) -> str:
    return tenant.sdk.files.create(file=("d.jsonl", io.BytesIO(content)), purpose="fine-tune").id


SEED = 1


def train(tenant: Tenant, model: str, training: str, method: str = "supervised", **hyper) -> object:
    job = tenant.sdk.fine_tuning.jobs.create(  # a fixed seed: the same run every time
        model=model, training_file=training, validation_file=training if method == "supervised" else None,
        method={"type": method, method: {"hyperparameters": hyper}}, seed=SEED,
    )
    done = wait_for(tenant, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    return done


def first_and_last(tenant: Tenant, job_id: str) -> tuple[float, dict]:
    events = tenant.sdk.fine_tuning.jobs.list_events(job_id, limit=100).data
    first = next(e for e in reversed(events) if e.type == "metrics").data["train_loss"]
    last_checkpoint = tenant.sdk.fine_tuning.jobs.checkpoints.list(job_id).data[0]
    return first, last_checkpoint.metrics.model_dump()


def test_a_continued_lora_job_starts_from_the_earlier_weights(trainer: Tenant) -> None:
    data = upload(trainer, chat_file(10))
    earlier = train(trainer, TINY, data, n_epochs=5, batch_size=10, lora_dropout=0.0, learning_rate_multiplier=20)
    start, earlier_end = first_and_last(trainer, earlier.id)
    assert earlier_end["full_valid_loss"] < start - 0.3  # it learnt something to continue from

    later = train(trainer, earlier.fine_tuned_model, data, **SFT)
    first, _ = first_and_last(trainer, later.id)
    # One batch holding the whole file, no dropout: the first step's loss is the
    # earlier model's loss on that file, measured before any update.
    assert first == pytest.approx(earlier_end["full_valid_loss"], rel=1e-4)
    assert later.model == earlier.fine_tuned_model
    assert later.fine_tuned_model.startswith(f"ft:{TINY}:default::")
    resolved = later.method.supervised.hyperparameters
    assert (resolved.training_type, resolved.lora_rank) == ("lora", 16)

    listed = {m.id: m for m in trainer.sdk.models.list().data}
    assert (listed[later.fine_tuned_model].parent, listed[later.fine_tuned_model].root) == (
        earlier.fine_tuned_model, TINY)
    assert (listed[earlier.fine_tuned_model].parent, listed[TINY].root) == (TINY, TINY)
    assert trainer.sdk.models.retrieve(later.fine_tuned_model).parent == earlier.fine_tuned_model
    reply = trainer.sdk.chat.completions.create(
        model=later.fine_tuned_model, messages=[{"role": "user", "content": "Question number 1?"}], max_tokens=3)
    assert reply.model == later.fine_tuned_model

    # A different LoRA shape cannot continue this adapter; another organisation cannot see it.
    with pytest.raises(openai.BadRequestError) as bad:
        trainer.sdk.fine_tuning.jobs.create(
            model=earlier.fine_tuned_model, training_file=data,
            method={"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 4}}})
    assert bad.value.body["param"] == "method.supervised.hyperparameters.lora_rank"
    other = Tenant(trainer.server, "other", trainer.server.new_key("someone-else"))
    other_data = upload(other, chat_file(10))
    for model in (earlier.fine_tuned_model, f"{earlier.fine_tuned_model}:ckpt-step-5"):
        with pytest.raises(openai.NotFoundError) as missing:
            other.sdk.fine_tuning.jobs.create(model=model, training_file=other_data)
        assert missing.value.body["param"] == "model" and missing.value.body["code"] == "model_not_found"


def test_dpo_after_sft_from_a_checkpoint_then_sft_after_dpo(trainer: Tenant) -> None:
    chat = upload(trainer, chat_file(10))
    prefs = upload(trainer, jsonl([preference_example(i) for i in range(10)]))
    sft = train(trainer, TINY, chat, n_epochs=2, batch_size=4, learning_rate_multiplier=20)
    checkpoint = trainer.sdk.fine_tuning.jobs.checkpoints.list(sft.id).data[-1]
    assert checkpoint.step_number == 3

    dpo = train(trainer, checkpoint.fine_tuned_model_checkpoint, prefs, "dpo",
                n_epochs=1, batch_size=4, beta=1.0, rpo_alpha=0.0, lora_dropout=0.0)
    # The reference of the DPO loss is the starting model (the checkpoint, not the
    # bare base), so before the first update the margin is zero: loss = ln 2.
    first, _ = first_and_last(trainer, dpo.id)
    assert first == pytest.approx(0.693147, abs=1e-4)
    sft_again = train(trainer, dpo.fine_tuned_model, chat, **SFT)
    lineage = {m.id: m.parent for m in trainer.sdk.models.list().data}
    assert lineage[sft_again.fine_tuned_model] == dpo.fine_tuned_model
    assert lineage[dpo.fine_tuned_model] == checkpoint.fine_tuned_model_checkpoint


def test_a_full_fine_tune_continues_as_a_full_fine_tune(trainer: Tenant) -> None:
    data = upload(trainer, chat_file(10))
    earlier = train(trainer, TINY, data, n_epochs=2, batch_size=10, training_type="full")
    _, earlier_end = first_and_last(trainer, earlier.id)
    with pytest.raises(openai.BadRequestError) as bad:
        trainer.sdk.fine_tuning.jobs.create(
            model=earlier.fine_tuned_model, training_file=data,
            method={"type": "supervised", "supervised": {"hyperparameters": {"training_type": "lora"}}})
    assert bad.value.body["param"] == "method.supervised.hyperparameters.training_type"

    later = train(trainer, earlier.fine_tuned_model, data, n_epochs=1, batch_size=10)
    first, _ = first_and_last(trainer, later.id)
    assert first == pytest.approx(earlier_end["full_valid_loss"], rel=1e-4)
    assert later.method.supervised.hyperparameters.training_type == "full"

    # A full fine-tune exports as a plain transformers folder, merged or not.
    with trainer.http() as http:
        exported = http.get(f"/models/{later.fine_tuned_model}/export", params={"merged": "true"})
    assert exported.headers["x-openft-export-kind"] == "full"
    names = {n.split("/", 1)[1] for n in tarfile.open(fileobj=io.BytesIO(exported.content)).getnames()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names and "adapter_config.json" not in names
