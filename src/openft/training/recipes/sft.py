"""Supervised fine-tuning, LoRA or full, on chat or prompt/completion files.

Reads top to bottom: model -> data -> hyperparameters -> adapter -> optimizer
-> resume -> train (report, validate, checkpoint, honour stop requests) ->
save -> report. Batches are packed without padding (``data.pack``); the loss
is the mean over label tokens of a batch. A run is a pure function of its
seed, data and hyperparameters on CPU, and a resumed run continues exactly
where the saved state left off (same batches, same RNG), so pausing,
crashing and resuming do not change the result.
"""

from __future__ import annotations


import time
from typing import Any

import torch

from openft.store.blobs import BlobStore
from openft.training import checkpoints
from openft.training.common import (
    epoch_order,
    linear_schedule,
    load_base,
    model_max_length,
    pick_device,
    read_lines,
    setup_torch,
    steps_per_epoch,
    token_loss,
)
from openft.training.config import RunConfig
from openft.training.data import Example, pack, tokenize
from openft.training.hyperparameters import learning_rate, resolve
from openft.training.report import Reporter

VALIDATION_SAMPLE = 16
"""Examples in the quick validation run during training (the full one runs per epoch)."""


def run(config: RunConfig, reporter: Reporter) -> None:
    device = pick_device(config.device)
    setup_torch(config.seed, device)
    blobs = BlobStore(config.storage_url)

    # Model.
    tokenizer, model = load_base(config, device)

    # Data.
    requested = config.hyperparameters
    max_length = int(requested.get("max_seq_length") or min(model_max_length(model), 2048))
    train, truncated = tokenize(
        tokenizer, read_lines(blobs, config.training_file_key), max_seq_length=max_length
    )
    valid: list[Example] = []
    if config.validation_file_key:
        valid, _ = tokenize(
            tokenizer, read_lines(blobs, config.validation_file_key), max_seq_length=max_length
        )
    if truncated:
        shown = ", ".join(map(str, truncated[:20])) + (", ..." if len(truncated) > 20 else "")
        reporter.event(
            f"{len(truncated)} training examples were longer than {max_length} tokens and "
            f"were truncated (lines {shown}).",
            level="warn",
            data={"truncated_lines": truncated},
        )

    # Hyperparameters.
    mean_tokens = sum(len(e.input_ids) for e in train) / len(train)
    hp = resolve(
        requested,
        method="supervised",
        n_examples=len(train),
        mean_tokens=mean_tokens,
        model_max_length=model_max_length(model),
        device=device.type,
    )
    hp["max_seq_length"] = max_length
    per_epoch = steps_per_epoch(len(train), hp["batch_size"])
    total_steps = per_epoch * hp["n_epochs"]

    # Adapter.
    if hp["training_type"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=hp["lora_rank"],
                lora_alpha=hp["lora_alpha"],
                lora_dropout=hp["lora_dropout"],
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )

    # Optimizer and schedule.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate(hp, "supervised"), weight_decay=0.0)
    warmup = int(total_steps * hp["warmup_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup))
    reporter.emit("hyperparameters", resolved=hp, total_steps=total_steps)

    # Resume.
    step, tokens, results = 0, 0, []
    if config.resume_state_key:
        meta = checkpoints.load_state(
            blobs, config.resume_state_key, model=model, optimizer=optimizer, scheduler=scheduler
        )
        step, tokens, results = meta["step"], meta["tokens"], meta["results"]
        reporter.event(f"Resuming training from step {step}/{total_steps}")

    def save_state() -> str:
        key = checkpoints.state_key(config.job_id, step)
        meta = {"step": step, "tokens": tokens, "results": results}
        checkpoints.save_state(
            blobs, key, model=model, optimizer=optimizer, scheduler=scheduler, meta=meta
        )
        return key

    # Train.
    model.train()
    started, first_step = time.monotonic(), step
    while step < total_steps:
        epoch, index = divmod(step, per_epoch)
        order = epoch_order(len(train), config.seed, epoch)
        batch = [train[i] for i in order[index * hp["batch_size"] : (index + 1) * hp["batch_size"]]]
        loss_sum, n_labels, correct = token_loss(model, pack(batch), device)
        (loss_sum / n_labels).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += sum(len(e.input_ids) for e in batch)

        row: dict[str, Any] = {
            "step": step,
            "train_loss": loss_sum.item() / n_labels,
            "train_accuracy": correct / n_labels,
        }
        if valid and (step % max(1, per_epoch // 4) == 0 or step == total_steps):
            row["valid_loss"], row["valid_mean_token_accuracy"] = evaluate(
                model, valid[:VALIDATION_SAMPLE], hp["batch_size"], device
            )
        results.append(row)
        rate = (time.monotonic() - started) / (step - first_step)
        reporter.emit(
            "metrics",
            **_metrics_event(row, total_steps),
            estimated_finish=time.time() + rate * (total_steps - step),
        )

        if step % per_epoch == 0:
            metrics = {k: v for k, v in row.items() if v is not None}
            if valid:
                full_loss, full_accuracy = evaluate(model, valid, hp["batch_size"], device)
                metrics.update(full_valid_loss=full_loss, full_valid_mean_token_accuracy=full_accuracy)
            state = save_state()
            model_key = checkpoints.checkpoint_key(config.job_id, step)
            checkpoints.save_model(blobs, model_key, model=model, tokenizer=tokenizer)
            reporter.emit(
                "checkpoint", step=step, state_key=state, model_key=model_key, metrics=metrics
            )

        stop = reporter.stop_requested()
        if stop == "cancel":
            return
        if stop == "pause" and step < total_steps:
            reporter.emit("paused", step=step, state_key=save_state())
            return

    # Save and report.
    model_key, results_key = checkpoints.save_final(
        blobs, config.job_id, model=model, tokenizer=tokenizer, results=results
    )
    reporter.emit("done", model_key=model_key, results_key=results_key, trained_tokens=tokens)


@torch.no_grad()
def evaluate(model: Any, examples: list[Example], batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean token loss and accuracy over ``examples`` (dropout off, RNG untouched)."""
    model.eval()
    loss_sum, n_labels, correct = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        loss, n, c = token_loss(model, pack(examples[start : start + batch_size]), device)
        loss_sum, n_labels, correct = loss_sum + loss.item(), n_labels + n, correct + c
    model.train()
    return loss_sum / max(n_labels, 1), correct / max(n_labels, 1)


def _metrics_event(row: dict[str, Any], total_steps: int) -> dict[str, Any]:
    message = f"Step {row['step']}/{total_steps}: training loss={row['train_loss']:.4f}"
    if "valid_loss" in row:
        message += f", validation loss={row['valid_loss']:.4f}"
    data = {
        "step": row["step"],
        "total_steps": total_steps,
        "train_loss": row["train_loss"],
        "train_mean_token_accuracy": row["train_accuracy"],
    }
    if "valid_loss" in row:
        data.update(valid_loss=row["valid_loss"], valid_mean_token_accuracy=row["valid_mean_token_accuracy"])
    return {"message": message, "data": data}



