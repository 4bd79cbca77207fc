"""Supervised fine-tuning, LoRA or full, on chat or prompt/completion files.

Reads top to bottom: model -> data -> hyperparameters -> seed -> adapter ->
optimizer -> resume -> train (report, validate, checkpoint, honour stop
requests) -> save. Batches are packed without padding (``data.pack``); the
loss is the mean over label tokens of a batch. A run is a pure function of
its seed, data and hyperparameters on CPU: the generator is seeded after the
base model is loaded (a first-use conversion must not shift it), and a
resumed run continues exactly where the saved state left off (same batches,
same RNG), so pausing, crashing and resuming do not change the result.
Persistence and reporting live in ``checkpoints.RunProgress``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from openft.families import has_fused_experts
from openft.training.checkpoints import RunProgress
from openft.training.common import (
    add_adapter,
    begin,
    epoch_order,
    model_max_length,
    optimizer_and_schedule,
    read_lines,
    seed_everything,
    start_folder,
    steps_per_epoch,
    token_loss,
)
from openft.training.config import Hyperparameters, RunConfig
from openft.training.data import Example, pack, tokenize
from openft.training.hyperparameters import max_seq_length, resolve
from openft.training.records import HyperparametersRecord
from openft.training.report import Reporter
from openft.training.team import SOLO, Team

if TYPE_CHECKING:
    from openft.ml_types import Model

VALIDATION_SAMPLE = 16
"""Examples in the quick validation run during training (the full one runs per epoch)."""


def run(config: RunConfig, reporter: Reporter, team: Team = SOLO) -> None:
    # Device, storage, model.
    device, blobs, tokenizer, model = begin(config)

    # Data.
    requested = config.hyperparameters
    max_length = max_seq_length(requested, model_max_length(model))
    train, truncated = tokenize(tokenizer, read_lines(blobs, config.training_file_key), max_seq_length=max_length)
    valid: list[Example] = []
    if config.validation_file_key:
        valid, _ = tokenize(tokenizer, read_lines(blobs, config.validation_file_key), max_seq_length=max_length)
    if truncated:
        shown = ", ".join(map(str, truncated[:20])) + (", ..." if len(truncated) > 20 else "")
        reporter.event(
            f"{len(truncated)} training examples were longer than {max_length} tokens and "
            f"were truncated (lines {shown}).",
            level="warn",
            data={"truncated_lines": truncated},
        )

    # Hyperparameters.
    hp = resolve(
        requested, method="supervised", n_examples=len(train),
        mean_tokens=sum(len(e.input_ids) for e in train) / len(train),
        max_length=max_length, device=device.type, experts=has_fused_experts(model),
    )
    per_epoch = steps_per_epoch(len(train), hp.batch_size)
    total_steps = per_epoch * hp.n_epochs

    # Seed, then adapter: the first draws from the generator are the LoRA weights.
    seed_everything(config.seed)
    model = add_adapter(model, hp, start_folder(config, blobs))

    # Optimizer and schedule.
    trainable, optimizer, scheduler = optimizer_and_schedule(model, hp, "supervised", total_steps)
    reporter.emit(HyperparametersRecord(hp.to_dict(), total_steps))

    # Resume.
    progress = RunProgress(
        blobs, config.job_id, reporter, model=model, tokenizer=tokenizer, optimizer=optimizer,
        scheduler=scheduler, total_steps=total_steps, steps_per_epoch=per_epoch,
        early_stopping_patience=hp.early_stopping_patience,
        keep_best=hp.fine_tuned_model_from == "best_valid_loss",
        accuracy_name="mean_token_accuracy", team=team,
    )
    progress.resume(config.resume_state_key)

    # Train.
    model.train()
    while not progress.done:
        epoch, index = progress.epoch_and_index
        order = epoch_order(len(train), config.seed, epoch)
        batch = [train[i] for i in order[index * hp.batch_size : (index + 1) * hp.batch_size]]
        # This rank's share of the global batch, scaled by the global label count:
        # summed over ranks, these are the one-worker gradients (see training.team).
        mine = team.share(batch)
        loss_sum, n_labels, correct = token_loss(model, pack(mine), device) if mine else (torch.zeros(()), 0, 0)
        global_labels = team.sum(n_labels)
        if mine:
            (loss_sum / global_labels).backward()
        team.sync_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row: dict[str, Any] = {
            "train_loss": team.sum(loss_sum.item()) / global_labels,
            "train_accuracy": team.sum(correct) / global_labels,
        }
        step = progress.step + 1
        if valid and team.is_main and (step % max(1, per_epoch // 4) == 0 or step == total_steps):
            row["valid_loss"], row["valid_accuracy"] = evaluate(model, valid[:VALIDATION_SAMPLE], hp, device)
        progress.stepped(sum(len(e.input_ids) for e in batch), row)
        if progress.at_epoch_end and team.is_main:
            progress.checkpoint(evaluate(model, valid, hp, device) if valid else None)
        if progress.should_exit():
            return

    # Save and report.
    progress.finish()


@torch.no_grad()
def evaluate(model: Model, examples: list[Example], hp: Hyperparameters, device: torch.device) -> tuple[float, float]:
    """Mean token loss and accuracy over ``examples`` (dropout off, RNG untouched)."""
    model.eval()
    loss_sum, n_labels, correct = 0.0, 0, 0
    for start in range(0, len(examples), hp.batch_size):
        loss, n, c = token_loss(model, pack(examples[start : start + hp.batch_size]), device)
        loss_sum, n_labels, correct = loss_sum + loss.item(), n_labels + n, correct + c
    model.train()
    return loss_sum / max(n_labels, 1), correct / max(n_labels, 1)
