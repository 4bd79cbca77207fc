"""Early stopping and the best checkpoint (openft extensions, passed with the
SDK's ``extra_body``-free ``method`` hyperparameters): a job stops once the
validation loss stops improving, says so in its events, and its fine-tuned
model has the weights of the best validation."""

from __future__ import annotations

import io
import json

import openai
import pytest

from support import Tenant
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training


def lines(answer: str) -> bytes:
    return "".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question number {i}?"},
        {"role": "assistant", "content": answer.format(i=i)},
    ]}) + "\n" for i in range(10)).encode()


@pytest.fixture
def trainer(training_server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


def test_early_stopping_keeps_the_best_validation_weights(trainer: Tenant) -> None:
    sdk = trainer.sdk
    train = sdk.files.create(file=("t.jsonl", io.BytesIO(lines("Answer{i}"))), purpose="fine-tune").id
    # The same questions with other answers: the validation loss soon stops falling.
    valid = sdk.files.create(file=("v.jsonl", io.BytesIO(lines("Other reply {i}"))), purpose="fine-tune").id
    hyper = {"n_epochs": 30, "batch_size": 5, "learning_rate_multiplier": 10,
             "early_stopping_patience": 2, "fine_tuned_model_from": "best_valid_loss"}
    job = sdk.fine_tuning.jobs.create(model=TINY, training_file=train, validation_file=valid, seed=3,
                                      method={"type": "supervised", "supervised": {"hyperparameters": hyper}})
    done = wait_for(trainer, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    resolved = done.method.supervised.hyperparameters
    assert (resolved.early_stopping_patience, resolved.fine_tuned_model_from) == (2, "best_valid_loss")

    events = list(reversed(sdk.fine_tuning.jobs.list_events(job.id, limit=100).data))
    metrics = [e.data for e in events if e.type == "metrics"]
    validations = [(m["step"], m["valid_loss"]) for m in metrics if "valid_loss" in m]
    best_step, best_loss = min(validations, key=lambda v: v[1])
    stopped = next(e for e in events if e.message.startswith("Early stopping"))
    assert stopped.data["early_stopping"]["best_step"] == best_step
    last = metrics[-1]["step"]
    assert last < metrics[-1]["total_steps"] == 60  # it stopped early...
    assert [s for s, _ in validations][-3] == best_step  # ...after 2 validations without improvement
    assert all(loss >= best_loss for _, loss in validations[-2:])
    chosen = next(e for e in events if e.data.get("fine_tuned_model_from") == "best_valid_loss")
    assert chosen.data["step"] == best_step and f"step {best_step}" in chosen.message

    # The fine-tuned model is the best step's weights: continuing it on the
    # validation file (one batch, no dropout), the first loss is that best loss.
    check = sdk.fine_tuning.jobs.create(
        model=done.fine_tuned_model, training_file=valid,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 10, "lora_dropout": 0.0}}})
    checked = wait_for(trainer, check.id, {"succeeded", "failed"})
    assert checked.status == "succeeded", checked.error
    first = next(e for e in reversed(sdk.fine_tuning.jobs.list_events(check.id, limit=50).data)
                 if e.type == "metrics").data["train_loss"]
    assert first == pytest.approx(best_loss, rel=1e-4)
    assert first != pytest.approx(validations[-1][1], rel=1e-4)  # not the last step's weights


def test_early_stopping_needs_a_validation_loss(trainer: Tenant) -> None:
    sdk = trainer.sdk
    train = sdk.files.create(file=("t.jsonl", io.BytesIO(lines("Answer{i}"))), purpose="fine-tune").id
    for hyper, param in [({"early_stopping_patience": 2}, "early_stopping_patience"),
                         ({"fine_tuned_model_from": "best_valid_loss"}, "fine_tuned_model_from")]:
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.fine_tuning.jobs.create(model=TINY, training_file=train,
                                        method={"type": "dpo", "dpo": {"hyperparameters": hyper}})
        assert bad.value.body["param"] == f"method.dpo.hyperparameters.{param}"
        assert "validation_file" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model=TINY, training_file=train, method={
            "type": "supervised", "supervised": {"hyperparameters": {"fine_tuned_model_from": "first"}}})
    assert bad.value.body["param"] == "method.supervised.hyperparameters.fine_tuned_model_from"
